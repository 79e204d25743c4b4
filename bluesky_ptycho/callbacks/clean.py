"""Frame cleaning stage: raw FCCD frames → photon-count frames for the reconstruction."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bluesky_ptycho.callbacks._frames import READ_ERRORS, RawFrames, frame_problem
from bluesky_ptycho.core import fccd
from bluesky_ptycho.core.arrays import get_xp, to_numpy
from bluesky_ptycho.core.clean import CleanedBatch, CleanSettings, Preprocessor
from bluesky_ptycho.core.dark import DarkResult
from bluesky_ptycho.core.geometry import Beamstop
from bluesky_ptycho.core.params import Param, params_of
from bluesky_ptycho.io.frames import FrameRef
from bluesky_ptycho.plugins.stage import DerivedRun, Stage


def clean_remote(
    preprocessor: Preprocessor, frames: np.ndarray | list[FrameRef]
) -> tuple[list[str], CleanedBatch | str | None]:
    """What a Dask worker runs: one batch through the nine steps.

    *frames* are raw frames already checked (stacked), or references to
    frames in the detector's files, which the worker reads and checks itself.
    Returns each frame's problem ("" when fine) and the cleaned batch of the
    fine ones (frames on the host), or why cleaning failed.
    """
    if isinstance(frames, np.ndarray):
        problems, raw = [""] * len(frames), frames
    else:
        raw = np.empty((len(frames), *fccd.RAW_SHAPE), np.uint16)  # read straight into it
        problems = []
        for k, ref in enumerate(frames):
            try:
                ref.read_into(raw[k])
            except (OSError, KeyError, IndexError, TypeError, ValueError) as err:
                problems.append(f"could not read the frame: {err}")
                continue
            problems.append(frame_problem(raw[k], fccd.RAW_SHAPE))
        if any(problems):
            raw = raw[[not p for p in problems]]
    if not len(raw):
        return problems, None
    try:
        out = preprocessor(raw)
    except ValueError as err:
        return problems, f"cleaning failed: {err}"
    return problems, replace(out, frames=to_numpy(out.frames))


@dataclass
class _Batch:
    """A batch out on the workers: its items, each one's problem found here ("" when sent),
    and what is sent (raw frames, or where they lie in the detector's files)."""

    items: list
    problems: list[str]
    payload: np.ndarray | list[FrameRef] | None
    future: Any = None
    sent: int = 0  # times sent again after a failure on the workers


class FrameCleaner(Stage):
    """Cleans each ``primary`` frame once the dark statistics are in.

    Inputs: the raw run's documents, and the ``dark_statistics`` derived run.
    Output: a derived run with stream ``cleaned``, one event per scan point:
    ``frame`` (frame_px², photons, DC at the centre), ``point``, ``x``, ``y``
    (m), ``valid``, ``flag`` (why a frame is not valid: a wrong shape or
    dtype, NaNs, all zeros, lost samples or saturation inside the crop, a
    failed cleaning), ``photons`` and ``ripple_adu``. Invalid frames are
    passed on flagged, never dropped, so the reconstruction can give them
    zero weight and a rescan can retake them.

    With ``where = "dask"`` in the pipeline file (:meth:`distribute`) the
    batches are cleaned on Dask workers, several at once; results are
    emitted in the order the frames came, at most ``max_in_flight`` frames
    are out at once, and a batch whose worker died is sent again (Dask
    re-runs it, and a batch that failed anyway is sent again up to
    ``RESEND`` times before its frames are flagged), so each frame comes out
    exactly once. The first batch is cleaned here: it fixes
    the pattern centre every worker then uses.

    The geometry (gain, crop, output size, beamstop) comes from the run's
    ``"ptycho"`` metadata; keyword arguments override any
    :class:`~bluesky_ptycho.core.clean.CleanSettings` field and are checked
    when the stage is made, before a scan starts.

    Parameters
    ----------
    device : {"cpu", "gpu"}
    batch_size : int
        Frames cleaned together (more is faster, less is more live).
    **settings
        CleanSettings fields, e.g. ``threshold_adu=15``, ``ripple=False``.
    """

    stage_name = "frame_cleaning"
    distributable = True
    RESEND = 3
    live_params = ("batch_size",)
    inputs = ("raw/primary", "dark_statistics/dark")
    outputs = ("frame_cleaning/cleaned",)
    params = (
        Param(
            "batch_size",
            "int",
            8,
            "Frames cleaned together (more: faster; fewer: more live).",
            min=1,
            max=4096,
        ),
        *params_of(
            CleanSettings, from_metadata=("adu_per_photon", "crop_px", "frame_px", "beamstop")
        ),
    )

    @classmethod
    def validate(cls, params: dict[str, Any]) -> None:
        given = {k: v for k, v in params.items() if k != "batch_size" and v is not None}
        CleanSettings(**given)  # how the settings go together (crop and frame sizes, …)

    def __init__(self, device: str = "cpu", batch_size: int = 8, **settings: Any) -> None:
        self.xp = get_xp(device)
        self.check_params(device, batch_size=batch_size, **settings)
        self.batch_size = batch_size
        self._overrides = {k: v for k, v in settings.items() if v is not None}
        self.settings: CleanSettings | None = None
        self.preprocessor: Preprocessor | None = None
        self._raw: RawFrames | None = None
        self._raw_uid: str | None = None
        self._dark_uid: str | None = None
        self._dark: dict | None = None
        self._out: DerivedRun | None = None
        self._frames_by_seq: dict[int, Any] = {}
        self._ready: list[tuple[int, float, float, Any]] = []
        self._raw_stopped = False
        self._dark_done = False
        self._setup_error = ""
        self.n_cleaned = 0
        self.n_flagged = 0
        self.client: Any = None
        self.max_in_flight = 0
        self.redone = 0
        self._in_flight: deque[_Batch] = deque()
        self._prep_future: Any = None
        super().__init__()

    def distribute(self, client: Any, max_in_flight: int = 64) -> None:
        """Clean on the workers of the Dask *client*, with at most *max_in_flight* frames out."""
        if max_in_flight < 1:
            raise ValueError(f"frame_cleaning: max_in_flight={max_in_flight} must be >= 1")
        self.client = client
        self.max_in_flight = max_in_flight

    def held_frames(self) -> int:
        return (
            len(self._ready) + len(self._frames_by_seq) + sum(len(b.items) for b in self._in_flight)
        )

    # -- two inputs: the raw run and the dark statistics run ---------------------
    def start(self, doc: dict) -> None:
        if doc.get("stage") == "dark_statistics":
            self._dark_uid = doc["uid"]
            return
        self._raw_uid = doc["uid"]
        self._raw = RawFrames(doc)
        md = dict(doc.get("ptycho") or {})
        base = CleanSettings(
            adu_per_photon=float(md.get("adu_per_photon", 36.5)),
            crop_px=int(md.get("crop_px", 512)),
            frame_px=int(md.get("frame_px", 128)),
            beamstop=Beamstop.from_dict(md.get("beamstop")),
        )
        self.settings = replace(base, **self._overrides)
        md["frame_pixel_size_m"] = md.get("pixel_size_m", 30e-6) * (
            self.settings.crop_px // self.settings.frame_px
        )
        self._out = DerivedRun(self, doc, {"ptycho": md, "clean_settings": self.settings.as_dict()})

    def descriptor(self, doc: dict) -> None:
        if doc["run_start"] == self._raw_uid and self._raw is not None:
            self._raw.descriptor(doc)

    def stream_resource(self, doc: dict) -> None:
        if self._raw is not None:
            self._raw.stream_resource(doc)

    def stream_datum(self, doc: dict) -> None:
        if self._raw is None:
            return
        # where the frames lie; read when cleaned (here, or by the Dask workers themselves),
        # so a late frame has the time to reach the file
        got = self._raw.from_datum(doc, "primary", read=False)
        if got is None:
            return
        for s, f in zip(got[1], got[2], strict=True):
            self._frames_by_seq[s] = f

    def event_page(self, doc: dict) -> None:
        if self._dark_uid is not None and self._dark is None and "mean" in doc["data"]:
            self._dark = {k: v[0] for k, v in doc["data"].items()}
            self._make_preprocessor()
            return
        if self._raw is None or self._raw.streams.get(doc["descriptor"]) != "primary":
            return
        _stream, seq, frames, data = self._raw.from_event_page(doc)
        # the stage's readbacks at the frame, in its units (µm): metres from here on
        xs = np.asarray(data.get(self._raw.x_key, [np.nan] * len(seq)), float) * self._raw.x_scale_m
        ys = np.asarray(data.get(self._raw.y_key, [np.nan] * len(seq)), float) * self._raw.y_scale_m
        points = data.get(self._raw.point_key) if self._raw.point_key else None
        for i, s in enumerate(seq):
            frame = frames[i] if frames is not None else self._frames_by_seq.pop(s, None)
            point = int(points[i]) if points is not None else s - 1
            self._ready.append((point, float(xs[i]), float(ys[i]), frame))

    def _make_preprocessor(self) -> None:
        assert self._dark is not None and self.settings is not None
        d = self._dark
        dark = None
        if int(d.get("n_frames", 0)) > 0:
            dark = DarkResult(
                np.asarray(d["mean"]),
                np.asarray(d["std"]),
                np.asarray(d["bad_pixels"]),
                int(d["n_frames"]),
                d.get("channel_mean"),
                d.get("channel_std"),
                None if d.get("bad_channels") is None else np.asarray(d["bad_channels"]),
            )
        else:
            self.log.warning(
                "no dark frames for this run: cleaning with the overscan fit alone, "
                "hot pixels are not masked"
            )
        try:
            self.preprocessor = Preprocessor(dark, self.settings, self.xp)
        except ValueError as err:  # darks of another shape, a crop off the detector
            self.log.error("cannot clean this run: %s", err)
            self._setup_error = str(err)

    def stop(self, doc: dict) -> None:
        if doc["run_start"] == self._raw_uid:
            self._raw_stopped = True
        elif doc["run_start"] == self._dark_uid:
            self._dark_done = True
        self._finish_if_done()

    # -- the work: batches of ready frames -----------------------------------------
    def has_work(self) -> bool:
        return (self._dark is not None and bool(self._ready)) or bool(self._in_flight)

    def work(self) -> None:
        remote = (
            self.client is not None
            and self.preprocessor is not None
            and self.preprocessor.region is not None
        )
        if remote:
            self._submit_ready()
            self._collect()
        elif self._ready:
            batch, self._ready = self._ready[: self.batch_size], self._ready[self.batch_size :]
            self._clean(batch)
        self._finish_if_done()

    def _finish_if_done(self) -> None:
        if not self._raw_stopped or self._out is None:
            return
        if self._dark is None and not self._dark_done:
            return  # the dark statistics are still on their way
        if self._ready and self._dark is None:
            # the dark statistics stage sent nothing (it failed): clean without darks
            self._dark = {"n_frames": 0}
            self._make_preprocessor()
        if not self._ready and not self._in_flight:
            self._prep_future = None
            self._out.stop()
            self.close()

    # -- on Dask workers ------------------------------------------------------------------
    def _submit(self, payload: np.ndarray | list[FrameRef]) -> Any:
        """The future of one batch cleaned on a worker; None when the workers cannot be
        reached this moment (one just died): :meth:`_collect` sends it again."""
        try:
            if self._prep_future is None:
                self._prep_future = self.client.scatter(
                    self.preprocessor, broadcast=True, hash=False
                )
            if isinstance(payload, np.ndarray):
                # straight to a worker (3× the rate of sending it with the task via the
                # scheduler)
                payload = self.client.scatter(payload, direct=True, hash=False)
            return self.client.submit(clean_remote, self._prep_future, payload, pure=False)
        except Exception as err:  # a connection to a worker that just went away
            self.log.warning(
                "could not send a batch to the workers (%s: %s); trying again",
                type(err).__name__,
                err,
            )
            self._prep_future = None
            return None

    def _submit_ready(self) -> None:
        out = sum(len(b.items) for b in self._in_flight)
        while self._ready and out < self.max_in_flight:
            batch, self._ready = self._ready[: self.batch_size], self._ready[self.batch_size :]
            problems = [self._problem(it) for it in batch]
            good = [it[3] for it, p in zip(batch, problems, strict=True) if not p]
            payload: Any = None
            if good and all(isinstance(f, FrameRef) for f in good):
                payload = good  # the worker reads them
            elif good:
                payload = np.stack([self._load(f) for f in good])
            self._in_flight.append(_Batch(batch, problems, payload))
            out += len(batch)

    def _collect(self) -> None:
        """Emit finished batches from the head, in order; wait a little for the head."""
        from distributed import wait

        for b in self._in_flight:
            if b.payload is not None and b.future is None:
                b.future = self._submit(b.payload)
                if b.future is None:
                    time.sleep(0.1)
                    return
        while self._in_flight:
            head = self._in_flight[0]
            if head.future is not None and not head.future.done():
                if self._ready and sum(len(b.items) for b in self._in_flight) < self.max_in_flight:
                    return  # room to send more first
                try:
                    wait(head.future, timeout=0.05)
                except TimeoutError:
                    return
                if not head.future.done():
                    return
            problems, cleaned = head.problems, None
            if head.future is not None and head.future.status != "finished":
                # the worker went away, or Dask gave up on the task
                err = head.future.exception() if head.future.status == "error" else None
                why = f"{type(err).__name__}: {err}" if err else head.future.status
                if head.sent < self.RESEND:
                    head.sent += 1
                    self.redone += len(head.items)
                    self.log.warning(
                        "batch of points %s lost on the workers (%s); sent again",
                        [it[0] for it in head.items],
                        why,
                    )
                    self._prep_future = None
                    head.future = self._submit(head.payload)
                    return
                cleaned = f"cleaning failed on the workers {head.sent + 1} times: {why}"
            elif head.future is not None:
                remote, cleaned = head.future.result()
                head.future.release()
                found = iter(remote)  # the worker's verdict on the frames sent
                problems = [p or next(found) for p in head.problems]
            self._in_flight.popleft()
            self._emit_batch(head.items, problems, cleaned)

    def on_abort(self) -> None:
        if self.client is not None:
            self.client.cancel([b.future for b in self._in_flight if b.future is not None])
        self._in_flight.clear()
        self._ready = []

    def _emit_flagged(self, items: list, why: str) -> None:
        assert self.settings is not None and self._out is not None
        n = self.settings.frame_px
        for point, x, y, _ in items:
            self.n_flagged += 1
            self.log.warning("frame of point %d flagged: %s", point, why)
            self._out.event(
                "cleaned",
                {
                    "frame": np.zeros((n, n), np.float32),
                    "point": int(point),
                    "x": x,
                    "y": y,
                    "valid": False,
                    "flag": why,
                    "photons": 0.0,
                    "ripple_adu": 0.0,
                },
            )

    @staticmethod
    def _problem(item: tuple) -> str:
        frame = item[3]
        if frame is None:
            return "missing frame"
        if isinstance(frame, FrameRef):
            return ""  # checked where it is read
        return frame_problem(frame, fccd.RAW_SHAPE)

    @staticmethod
    def _load(frame: Any) -> np.ndarray:
        return frame.read() if isinstance(frame, FrameRef) else np.asarray(frame)

    def _clean(self, batch: list) -> None:
        """Clean *batch* here, on the stage's thread."""
        if self.preprocessor is None:
            self._emit_flagged(batch, f"not cleaned: {self._setup_error}")
            return
        items = []
        for point, x, y, frame in batch:
            if isinstance(frame, FrameRef):
                try:
                    frame = self._raw.read(frame) if self._raw is not None else frame.read()
                except READ_ERRORS as err:
                    self._emit_flagged([(point, x, y, None)], f"could not read the frame: {err}")
                    continue
            items.append((point, x, y, frame))
        problems = [self._problem(it) for it in items]
        good = [it[3] for it, p in zip(items, problems, strict=True) if not p]
        cleaned: CleanedBatch | str | None = None
        if good:
            try:
                cleaned = self.preprocessor(np.stack([np.asarray(f) for f in good]))
            except ValueError as err:
                cleaned = f"cleaning failed: {err}"
        self._emit_batch(items, problems, cleaned)

    def _emit_batch(
        self, batch: list, problems: list[str], cleaned: CleanedBatch | str | None
    ) -> None:
        """One event per item, in order: flagged for its problem, else its cleaned frame
        (*cleaned* holds the frames of the items without problems, or why they all failed)."""
        assert self._out is not None
        frames = to_numpy(cleaned.frames) if isinstance(cleaned, CleanedBatch) else None
        k = 0
        for item, problem in zip(batch, problems, strict=True):
            if problem or not isinstance(cleaned, CleanedBatch):
                self._emit_flagged([item], problem or str(cleaned))
                continue
            point, x, y, _ = item
            f, flag = frames[k], cleaned.flags[k]
            ripple = float(cleaned.ripple_adu[k])
            k += 1
            if flag:
                self.n_flagged += 1
                self.log.warning("frame of point %d flagged: %s", point, flag)
            else:
                self.n_cleaned += 1
            self._out.event(
                "cleaned",
                {
                    "frame": f,
                    "point": int(point),
                    "x": x,
                    "y": y,
                    "valid": not flag,
                    "flag": flag,
                    "photons": float(f.sum()),
                    "ripple_adu": ripple,
                },
            )

    @property
    def center(self) -> tuple[float, float] | None:
        """The pattern centre in use (row, col), once known."""
        return None if self.preprocessor is None else self.preprocessor.center
