"""Dark statistics stage: per pixel and per ADC channel, over the ``dark`` stream."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
from event_model.documents import (
    EventDescriptor,
    EventPage,
    RunStart,
    RunStop,
    StreamDatum,
    StreamResource,
)

from bluesky_ptycho.callbacks._frames import READ_ERRORS, RawFrames, frame_problem
from bluesky_ptycho.core import fccd
from bluesky_ptycho.core.arrays import get_xp, to_numpy
from bluesky_ptycho.core.dark import DarkSettings, RunningDarkStats
from bluesky_ptycho.core.params import params_of
from bluesky_ptycho.plugins.stage import DerivedRun, Stage


class DarkStatistics(Stage):
    """Accumulates dark frames as they arrive; publishes mean, std and bad pixels.

    The statistics are published (one event in stream ``dark`` of a derived
    run) as soon as the ``primary`` stream begins, or at the end of the run if
    it never does.

    Parameters
    ----------
    device : {"cpu", "gpu"}
        Where the accumulation runs.
    **settings
        :class:`~bluesky_ptycho.core.dark.DarkSettings` fields (bad-pixel and bad-channel
        thresholds).
    """

    stage_name = "dark_statistics"
    inputs = ("raw/dark",)
    outputs = ("dark_statistics/dark",)
    params = params_of(DarkSettings)

    def __init__(
        self, device: str = "cpu", max_std_adu: float = 30.0, channel_excess_adu: float = 15.0
    ) -> None:
        self.xp = get_xp(device)
        self.settings = DarkSettings(max_std_adu, channel_excess_adu)
        self.stats: RunningDarkStats | None = None
        self._frames: RawFrames | None = None
        self._source: RunStart | None = None
        self._out: DerivedRun | None = None
        self.skipped: list[tuple[int, str]] = []
        super().__init__()

    def summary(self) -> str:
        res = getattr(self, "result", None)
        if res is None:
            return f"no dark statistics ({len(self.skipped)} frame(s) skipped)"
        return (
            f"{res.n_frames} dark frame(s) averaged, {len(self.skipped)} skipped; "
            f"{int(to_numpy(res.bad).sum())} bad pixel(s), "
            f"{int(to_numpy(res.bad_channels).sum())} bad ADC channel(s)"
        )

    def start(self, doc: RunStart) -> None:
        self._source = doc
        self._frames = RawFrames(doc)
        self.stats = RunningDarkStats(fccd.RAW_SHAPE, self.xp)

    def descriptor(self, doc: EventDescriptor) -> None:
        assert self._frames is not None
        self._frames.descriptor(doc)
        if doc.get("name") == "primary":
            self._publish()

    def stream_resource(self, doc: StreamResource) -> None:
        assert self._frames is not None
        self._frames.stream_resource(doc)

    def stream_datum(self, doc: StreamDatum) -> None:
        assert self._frames is not None
        got = self._frames.from_datum(doc, "dark", read=False)
        if got is None:
            return
        for s, ref in zip(got[1], got[2], strict=True):
            try:
                frame = self._frames.read(ref)
            except READ_ERRORS as err:
                self.skipped.append((s, f"could not read the frame: {err}"))
                self.log.warning("dark frame %d skipped: could not read it: %s", s, err)
                continue
            self._add([s], [frame])

    def event_page(self, doc: EventPage) -> None:  # type: ignore[override]  # None: see Stage
        assert self._frames is not None
        stream, seq, frames, _ = self._frames.from_event_page(doc)
        if stream == "dark" and frames is not None:
            self._add(seq, frames)

    def _add(self, seq: list[int], frames: list) -> None:
        assert self.stats is not None
        good = []
        for s, f in zip(seq, frames, strict=True):
            problem = frame_problem(f, fccd.RAW_SHAPE)
            if problem:
                self.skipped.append((s, problem))
                self.log.warning("dark frame %d skipped: %s", s, problem)
            else:
                good.append(f)
        if good:
            self.stats.update(self.xp.asarray(np.stack(good)))

    def _publish(self) -> None:
        if self._out is not None or self._source is None or self.stats is None:
            return
        res = self.stats.result(self.settings)
        self._out = DerivedRun(self, self._source, {"dark_settings": asdict(self.settings)})
        if res.n_frames == 0:
            self.log.warning("no usable dark frame in this run: frames will be cleaned without")
        self._out.event(
            "dark",
            {
                "mean": to_numpy(res.mean),
                "std": to_numpy(res.std),
                "bad_pixels": to_numpy(res.bad),
                "channel_mean": to_numpy(res.channel_mean),
                "channel_std": to_numpy(res.channel_std),
                "bad_channels": to_numpy(res.bad_channels),
                "n_frames": int(res.n_frames),
                "n_bad": int(to_numpy(res.bad).sum()),
                "n_bad_channels": int(to_numpy(res.bad_channels).sum()),
            },
        )
        self.result = res
        self._out.stop()

    def stop(self, doc: RunStop) -> None:
        try:
            self._publish()
        finally:
            if self._out is not None:
                self._out.stop(exit_status="success" if self.stats else "fail")
            self.close()
