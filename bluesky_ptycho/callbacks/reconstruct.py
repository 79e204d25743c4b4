"""Streaming reconstruction stage: ePIE with probe refinement while frames arrive."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..core._array import backend, to_numpy
from ..core.geometry import Geometry, ZonePlate
from ..core.ptycho import EpieOptions, ObjectGrid, StreamingEpie, object_grid, probe_from_counts
from ..core.sim import fzp_probe
from .base import DerivedRun, Stage


@dataclass
class ReconstructionResult:
    """What the stage holds at the end (also published as documents)."""

    object: np.ndarray
    probe: np.ndarray
    grid: ObjectGrid
    errors: list[float]
    weights: np.ndarray
    illumination: np.ndarray
    flags: dict[int, str] = field(default_factory=dict)
    epochs: int = 0
    seconds: float = 0.0


class StreamingReconstruction(Stage):
    """Allocates for the whole scan at its start, iterates as frames arrive.

    Input: the ``frame_cleaning`` derived run. Frames not yet measured, and
    frames flagged invalid, have zero weight. Output: a derived run with
    stream ``iteration`` (one event per epoch: data error, frames in use) and
    stream ``snapshot`` (object, probe) at most every ``snapshot_interval``
    seconds, the last one with ``final=True`` after ``final_epochs`` epochs
    past the end of the scan.

    Parameters
    ----------
    device : {"cpu", "gpu"}
    final_epochs : int
        Epochs run after the last frame.
    snapshot_interval : float
        Seconds between snapshots while iterating.
    min_frames : int
        Frames needed before iterating starts.
    max_epochs : int
        Cap on epochs while the scan still runs (0: no cap).
    options : EpieOptions, optional
    initial_probe : {"zone_plate", "estimate"}
        Start from the zone plate in the run's metadata, or wait for the
        ``stxm`` stage's probe estimate from the mean pattern (the zone
        plate is used, with a warning, if none comes).
    """

    stage_name = "reconstruction"

    def __init__(
        self,
        device: str = "cpu",
        final_epochs: int = 40,
        snapshot_interval: float = 1.0,
        min_frames: int = 16,
        max_epochs: int = 0,
        options: EpieOptions | None = None,
        initial_probe: str = "zone_plate",
    ) -> None:
        self.xp = backend(device)
        if initial_probe not in ("zone_plate", "estimate"):
            raise ValueError(
                f"reconstruction: initial_probe={initial_probe!r} must be 'zone_plate' or 'estimate'"
            )
        self.initial_probe = initial_probe
        self._probe_ready = initial_probe == "zone_plate"
        self.final_epochs = int(final_epochs)
        self.snapshot_interval = float(snapshot_interval)
        self.min_frames = int(min_frames)
        self.max_epochs = int(max_epochs)
        self.options = options or EpieOptions()
        self.engine: StreamingEpie | None = None
        self.grid: ObjectGrid | None = None
        self.flags: dict[int, str] = {}
        self.result: ReconstructionResult | None = None
        self._out: DerivedRun | None = None
        self._source_done = False
        self._epochs_after = 0
        self._scaled = False
        self._last_snapshot = 0.0
        self._t0 = 0.0
        super().__init__()

    def start(self, doc: dict) -> None:
        if doc.get("stage") != "frame_cleaning":
            return
        md = doc["ptycho"]
        g = Geometry.from_metadata(md)
        positions = np.asarray(md["positions_m"], dtype=np.float64)
        self.grid = object_grid(positions, g.object_pixel_size_m, g.frame_px, margin_px=16)
        probe = self.xp.asarray(fzp_probe(g, ZonePlate(**md.get("zone_plate", {}))))
        self.engine = StreamingEpie(
            self.grid.to_pixels(positions), self.grid.shape, probe, self.options
        )
        self._t0 = time.monotonic()
        self._out = DerivedRun(
            self,
            doc,
            {
                "ptycho": md,
                "object_grid": {
                    "shape": list(self.grid.shape),
                    "origin_m": list(self.grid.origin_m),
                    "pixel_size_m": self.grid.pixel_size_m,
                },
                "algorithm": "epie",
                "options": vars(self.options),
            },
        )
        self.log.info(
            "allocated %d frames of %s, object %s",
            len(positions),
            (g.frame_px,) * 2,
            self.grid.shape,
        )

    def event_page(self, doc: dict) -> None:
        if "probe" in doc["data"] and "n_frames" in doc["data"]:
            self._probe_estimate(doc["data"])
            return
        if self.engine is None or self.grid is None or "frame" not in doc["data"]:
            return
        d = doc["data"]
        valid = np.asarray(d["valid"], bool)
        points = np.asarray(d["point"], np.int64)
        n = len(self.engine.weights)
        in_range = (points >= 0) & (points < n)
        for p in points[~in_range]:
            self.flags[int(p)] = "point index outside the scan"
        for p, why in zip(
            points[in_range & ~valid], np.asarray(d["flag"])[in_range & ~valid], strict=True
        ):
            self.flags[int(p)] = str(why)
            self.engine.flag([p])
        ok = in_range & valid
        if not ok.any():
            return
        frames = np.stack(
            [np.asarray(f, np.float32) for f, k in zip(d["frame"], ok, strict=True) if k]
        )
        finite = np.isfinite(frames).all(axis=(1, 2))
        for p in points[ok][~finite]:
            self.flags[int(p)] = "non-finite values after cleaning"
            self.engine.flag([p])
        frames, pts = frames[finite], points[ok][finite]
        if not len(pts):
            return
        xy = np.stack(
            [np.asarray(d["x"], float)[ok][finite], np.asarray(d["y"], float)[ok][finite]], 1
        )
        pos = None if np.isnan(xy).any() else self.grid.to_pixels(xy)
        if not self._scaled:
            self.engine.probe = probe_from_counts(
                self.engine.probe, float(frames.sum(axis=(1, 2)).mean())
            )
            self._scaled = True
        self.engine.add_frames(pts, frames, pos)

    def _probe_estimate(self, data: dict) -> None:
        """The stxm stage's probe estimate: the starting probe when asked for, before iterating."""
        if self._probe_ready or self.engine is None or self.engine.epoch > 0:
            return
        probe = np.asarray(data["probe"][-1], np.complex64)
        if probe.shape != tuple(self.engine.probe.shape):
            self.log.warning("probe estimate of shape %s ignored: the frames are %s",
                             probe.shape, tuple(self.engine.probe.shape))
            return
        self.engine.probe = self.xp.asarray(probe)
        self._scaled = True  # the estimate carries the data's scale
        self._probe_ready = True
        self.log.info("starting from the probe estimated from %d frames", data["n_frames"][-1])

    def stop(self, doc: dict) -> None:
        if self._out is not None and doc["run_start"] == self._out.start_doc["source_run"]:
            self._source_done = True
            if not self._probe_ready:
                self.log.warning("no probe estimate came: starting from the zone plate")
                self._probe_ready = True
            if self.engine is None or self.engine.n_measured == 0:
                self._finish()

    # -- iterating ---------------------------------------------------------------------
    def has_work(self) -> bool:
        e = self.engine
        if e is None or self._out is None or self._out.stopped or not self._probe_ready:
            return False
        if e.n_measured < min(self.min_frames, len(e.weights)) and not self._source_done:
            return False
        if not self._source_done and self.max_epochs and e.epoch >= self.max_epochs:
            return False
        return e.n_measured > 0

    def work(self) -> None:
        assert self.engine is not None and self._out is not None
        err = self.engine.iterate(1)
        if err:
            self._out.event(
                "iteration",
                {
                    "epoch": int(self.engine.epoch),
                    "data_error": float(err[0]),
                    "n_measured": int(self.engine.n_measured),
                    "elapsed": time.monotonic() - self._t0,
                },
            )
        if self._source_done:
            self._epochs_after += 1
            if self._epochs_after >= self.final_epochs:
                self._finish()
                return
        if time.monotonic() - self._last_snapshot >= self.snapshot_interval:
            self._snapshot(final=False)

    def _snapshot(self, final: bool) -> None:
        assert self.engine is not None and self._out is not None
        self._last_snapshot = time.monotonic()
        self._out.event(
            "snapshot",
            {
                "object": to_numpy(self.engine.object),
                "probe": to_numpy(self.engine.probe),
                "epoch": int(self.engine.epoch),
                "n_measured": int(self.engine.n_measured),
                "data_error": float(self.engine.errors[-1]) if self.engine.errors else float("nan"),
                "final": bool(final),
            },
        )

    def _finish(self) -> None:
        assert self._out is not None
        if self.engine is not None and self.grid is not None:
            self._snapshot(final=True)
            self.result = ReconstructionResult(
                object=to_numpy(self.engine.object),
                probe=to_numpy(self.engine.probe),
                grid=self.grid,
                errors=list(self.engine.errors),
                weights=to_numpy(self.engine.weights),
                illumination=to_numpy(self.engine.illumination()),
                flags=dict(self.flags),
                epochs=self.engine.epoch,
                seconds=time.monotonic() - self._t0,
            )
        self._out.stop()
        self.close()
