"""Streaming reconstruction stage: any of the core solvers, iterating while frames arrive."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from event_model.documents import EventPage, RunStart, RunStop

from bluesky_ptycho.callbacks.streaming import Snapshot, StreamingReconstruction
from bluesky_ptycho.core.arrays import backend, to_numpy
from bluesky_ptycho.core.geometry import Geometry, ZonePlate
from bluesky_ptycho.core.metrics import FRC
from bluesky_ptycho.core.params import Param, declared
from bluesky_ptycho.core.ptycho import ObjectGrid
from bluesky_ptycho.core.sim import fzp_probe
from bluesky_ptycho.core.solvers import (
    ALGORITHMS,
    Solver,
    SolverOptions,
    make_options,
    solver_class,
)
from bluesky_ptycho.core.solvers.setup import scan_grid, setup_solver
from bluesky_ptycho.plugins.stage import DerivedRun, Stage, metadata

#: points of the published FRC curve (fixed, so the stream's shapes never change)
FRC_POINTS = 64


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
    iterations: int = 0
    seconds: float = 0.0
    frc_resolution_m: float = float("nan")
    stop_reason: str = ""


class StreamingReconstructionStage(Stage):
    """Allocates a solver for the whole scan at its start; iterates in the background as frames arrive.

    Input: the ``frame_cleaning`` derived run. Frames not yet measured, and
    frames flagged invalid, have zero weight. Output: a derived run with
    stream ``iteration`` (one event per iteration: data error, frames in
    use) and stream ``snapshot`` (object, probe modes) at most every
    ``snapshot_interval`` seconds, the last one with ``final=True`` after
    ``final_iterations`` iterations past the end of the scan.

    Parameters
    ----------
    device : {"cpu", "gpu"}
    algorithm : {"rpie", "epie", "dm", "raar", "lsqml"}
        The solver (:mod:`bluesky_ptycho.core.solvers`).
    options : dict, optional
        The solver's options by name (``probe_modes``, ``batch_size``, …);
        unknown names are refused before the scan starts.
    final_iterations : int
        Iterations run after the last frame.
    snapshot_interval : float
        Seconds between snapshots while iterating.
    min_frames : int
        Frames needed before iterating starts.
    max_live_iterations : int
        Cap on iterations while the scan still runs (0: no cap).
    initial_probe : {"zone_plate", "estimate"}
        Start from the zone plate in the run's metadata, or wait for the
        ``stxm`` stage's probe estimate from the mean pattern (the zone
        plate is used, with a warning, if none comes).
    """

    stage_name = "reconstruction"
    inputs = ("frame_cleaning/cleaned",)
    optional_inputs = ("stxm/probe_estimate",)
    outputs = ("reconstruction/iteration", "reconstruction/snapshot", "reconstruction/frc")
    feedback_inputs = ("quality/verdict",)
    live_params = ("final_iterations", "snapshot_interval", "max_live_iterations", "frc_interval")
    params = (
        Param("algorithm", "str", "rpie", "The solver.", choices=ALGORITHMS),
        Param("options", "table", {}, "Solver options by name (`bluesky-ptycho stages "
              "reconstruction` lists each algorithm's)."),
        Param("final_iterations", "int", 40, "Iterations after the last frame.", min=0,
              max=100_000),
        Param("snapshot_interval", "float", 1.0, "Time between published snapshots.", "s",
              min=0, max=3600, exclusive="min"),
        Param("min_frames", "int", 16, "Frames needed before iterating starts.", min=1,
              max=1_000_000),
        Param("max_live_iterations", "int", 0, "Cap on iterations while the scan runs (0: none).",
              min=0, max=1_000_000),
        Param("initial_probe", "str", "zone_plate", "Start from the zone plate in the metadata, "
              "or the stxm stage's estimate.", choices=("zone_plate", "estimate")),
        Param("frc_interval", "float", 30.0, "Time between half-set FRCs (even against odd "
              "frames) while the scan runs; each costs about six iterations (0: none live).",
              "s", min=0, max=3600),
        Param("final_frc", "bool", True, "Take the half-set FRC after the final image (stream "
              "'frc'; the final snapshot is not held up by it)."),
    )  # fmt: skip

    @classmethod
    def nested_params(cls, name: str) -> dict[str, tuple[Param, ...]]:
        if name != "options":
            return {}
        return {
            f"{a} options": declared(solver_class(a).Options) for a in ALGORITHMS if a != "epie"
        }

    @classmethod
    def validate(cls, params: dict[str, Any]) -> None:
        try:
            make_options(params.get("algorithm", "rpie"), **params.get("options", {}))
        except (TypeError, ValueError) as err:
            raise ValueError(f"stage 'reconstruction': options: {err}") from None

    @classmethod
    def required_inputs(cls, params: dict[str, Any]) -> tuple[str, ...]:
        if params.get("initial_probe") == "estimate":
            return (*cls.inputs, "stxm/probe_estimate")
        return cls.inputs

    def __init__(
        self,
        device: str = "cpu",
        algorithm: str = "rpie",
        options: dict[str, Any] | None = None,
        final_iterations: int = 40,
        snapshot_interval: float = 1.0,
        min_frames: int = 16,
        max_live_iterations: int = 0,
        initial_probe: str = "zone_plate",
        frc_interval: float = 30.0,
        final_frc: bool = True,
    ) -> None:
        self.xp = backend(device)
        self.check_params(
            device, algorithm=algorithm, options=dict(options or {}),
            final_iterations=final_iterations, snapshot_interval=snapshot_interval,
            min_frames=min_frames, max_live_iterations=max_live_iterations,
            initial_probe=initial_probe, frc_interval=frc_interval, final_frc=final_frc,
        )  # fmt: skip
        self.frc_interval = float(frc_interval)
        self.final_frc = bool(final_frc)
        self._final_snap: Snapshot | None = None
        self.frc: dict[str, Any] | None = None
        self.solver_type: type[Solver] = solver_class(algorithm)
        self.options: SolverOptions = make_options(algorithm, **(options or {}))
        self.option_values = dict(options or {})
        self.algorithm = algorithm
        self.initial_probe = initial_probe
        self._probe_ready = initial_probe == "zone_plate"
        self.final_iterations = int(final_iterations)
        self.snapshot_interval = float(snapshot_interval)
        self.min_frames = int(min_frames)
        self.max_live_iterations = int(max_live_iterations)
        self.stream: StreamingReconstruction | None = None
        self.grid: ObjectGrid | None = None
        self.n_points = 0
        self.flags: dict[int, str] = {}
        #: frames of the run placed at their planned positions (no readback recorded)
        self.planned_fallback = 0
        self.result: ReconstructionResult | None = None
        self._out: DerivedRun | None = None
        self._pending: list[tuple] = []
        self._t0 = 0.0
        #: (iteration, data error, frames in use) of the last iteration; (0, NaN, 0) before it
        self.last_iteration: tuple[int, float, int] = (0, float("nan"), 0)
        super().__init__()

    def _apply_live(self, name: str, value: Any) -> None:
        super()._apply_live(name, value)
        if self.stream is not None:  # the solver's thread reads these each iteration
            setattr(self.stream, name, type(getattr(self.stream, name))(value))

    def on_abort(self) -> None:
        if self.stream is not None:
            self.stream.abort()

    def held_frames(self) -> int:
        return sum(len(p[0]) for p in self._pending)

    def summary(self) -> str:
        iteration, error, used = self.last_iteration
        r = self.result
        parts = [
            f"{self.solver_type.name}, {iteration} iteration(s)"
            + (f" ({r.stop_reason})" if r is not None and r.stop_reason else ""),
            f"data error {error:.4g}",
            f"{used} of {self.n_points} frame(s) used, {len(self.flags)} flagged",
        ]
        if self.frc is not None:
            parts.append(f"resolution {self.frc['resolution_nm']:.3g} nm (half-set FRC)")
        if r is not None:
            parts.append(f"{r.seconds:.1f} s")
        return ", ".join(parts)

    def status(self) -> dict[str, Any]:
        """:meth:`Stage.status`, with where the reconstruction stands: ``iteration``,
        ``data_error`` (of the last iteration; NaN before the first), ``frames_used`` (frames
        with weight), ``points`` (of the scan), ``flagged`` (frames left out),
        ``resolution_nm`` (the latest half-set FRC; NaN before the first) and ``phase``
        (``waiting``, ``scan``, ``final iterations`` or ``done``)."""
        st = super().status()
        iteration, error, used = self.last_iteration
        finishing = self.stream is not None and self.stream.finishing
        st.update(
            iteration=iteration,
            data_error=error,
            frames_used=used,
            points=self.n_points,
            flagged=len(self.flags),
            resolution_nm=self.frc["resolution_nm"] if self.frc is not None else float("nan"),
            phase="done" if self.done.is_set() else "final iterations" if finishing
            else "scan" if self.stream is not None else "waiting",
        )  # fmt: skip
        return st

    def start(self, doc: RunStart) -> None:
        if doc.get("stage") != "frame_cleaning":
            return
        md = metadata(doc)
        g = Geometry.from_metadata(md)
        self.planned_fallback = 0
        positions = np.asarray(md["positions_m"], dtype=np.float64)
        self.grid = scan_grid(positions, g.object_pixel_size_m, g.frame_px)
        self.n_points = len(positions)
        self.grid_positions_m = positions
        self._probe = fzp_probe(g, ZonePlate(**md.get("zone_plate", {})))
        self._positions_px = self.grid.to_pixels(positions)
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
                "algorithm": self.solver_type.name,
                "options": asdict(self.options),
            },
        )
        self.log.info(
            "%s: %d frames of %s, object %s",
            self.solver_type.name,
            len(positions),
            (g.frame_px,) * 2,
            self.grid.shape,
        )

    def _begin(self, mean_counts: float | None) -> None:
        """Allocate the solver and start iterating (the probe is known now)."""
        assert self.grid is not None
        solver = setup_solver(
            self.grid_positions_m,
            self.grid.pixel_size_m,
            self.xp.asarray(self._probe),
            mean_counts,
            self.algorithm,
            self.option_values,
            grid=self.grid,
            corners=self._positions_px,
        ).solver
        self.stream = StreamingReconstruction(
            solver,
            snapshot_interval=self.snapshot_interval,
            final_iterations=self.final_iterations,
            min_frames=self.min_frames,
            max_live_iterations=self.max_live_iterations,
            on_snapshot=lambda snap: self.call_soon(lambda: self._publish_snapshot(snap)),
            on_iteration=lambda *a: self.call_soon(lambda: self._publish_iteration(*a)),
            on_error=lambda err: self.call_soon(lambda: self._finish(None)),
            frc_interval=self.frc_interval,
            final_frc=self.final_frc,
            on_frc=lambda *a: self.call_soon(lambda: self._publish_frc(*a)),
            on_end=lambda: self.call_soon(lambda: self._finish(self._final_snap)),
        )
        for item in self._pending:
            self.stream.add_frames(*item)
        self._pending = []

    def event_page(self, doc: EventPage) -> None:  # type: ignore[override]  # None: see Stage
        if "probe" in doc["data"] and "n_frames" in doc["data"]:
            self._probe_estimate(doc["data"])
            return
        if "bad" in doc["data"] and "reason" in doc["data"]:
            self._verdicts(doc["data"])
            return
        if self.grid is None or "frame" not in doc["data"]:
            return
        d = doc["data"]
        valid = np.asarray(d["valid"], bool)
        points = np.asarray(d["point"], np.int64)
        self._new_points(points, np.asarray(d["x"], float), np.asarray(d["y"], float))
        in_range = (points >= 0) & (points < self.n_points)
        for p in points[~in_range]:
            self.flags[int(p)] = "point index outside the scan"
        bad = in_range & ~valid
        for p, why in zip(points[bad], np.asarray(d["flag"])[bad], strict=True):
            self.flags[int(p)] = str(why)
        ok = in_range & valid
        frames = (
            np.stack([np.asarray(f, np.float32) for f, k in zip(d["frame"], ok, strict=True) if k])
            if ok.any()
            else np.zeros((0, 1, 1), np.float32)
        )
        finite = np.isfinite(frames).all(axis=(1, 2))
        for p in points[ok][~finite]:
            self.flags[int(p)] = "non-finite values after cleaning"
        flagged = np.concatenate([points[bad], points[ok][~finite]])
        if len(flagged) and self.stream is not None:
            self.stream.flag(flagged)  # a re-measured point that came out bad
        frames, pts = frames[finite], points[ok][finite]
        for p in pts:  # measured again and good now
            self.flags.pop(int(p), None)
        if not len(pts):
            return
        xy = np.stack(
            [np.asarray(d["x"], float)[ok][finite], np.asarray(d["y"], float)[ok][finite]], 1
        )
        pos = self._measured_or_planned(pts, xy)
        item = (pts, frames, pos)
        if self.stream is not None:
            self.stream.add_frames(*item)
            return
        self._pending.append(item)
        if self._probe_ready:
            self._begin(float(frames.sum(axis=(1, 2)).mean()))

    def _measured_or_planned(self, pts: np.ndarray, xy: np.ndarray) -> np.ndarray | None:
        """Pixel positions of frames: the stage's readbacks (m) where the events carried
        them, the planned positions where they did not (said once per run in the log)."""
        assert self.grid is not None
        missing = ~np.isfinite(xy).all(axis=1)
        if missing.all():
            pos = None  # the solver keeps the planned positions
        else:
            pos = self.grid.to_pixels(np.where(missing[:, None], 0.0, xy))
            pos[missing] = self._positions_px[pts[missing]]
        if missing.any():
            if not self.planned_fallback:
                self.log.warning(
                    "frames without stage readbacks (first: point %d): their planned "
                    "positions are used",
                    int(pts[missing][0]),
                )
            self.planned_fallback += int(missing.sum())
        return pos

    def _verdicts(self, d: dict) -> None:
        """The quality monitor judged frames bad (low flux, a data-error outlier): weight 0
        until the point is measured again."""
        bad = [
            (int(p), str(r))
            for p, b, r in zip(d["point"], d["bad"], d["reason"], strict=True)
            if b and 0 <= int(p) < self.n_points
        ]
        for p, why in bad:
            self.flags[p] = why
        if bad and self.stream is not None:
            self.stream.flag(np.array([p for p, _ in bad]))

    def _new_points(self, points: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> None:
        """Points past the planned ones (an adaptive rescan adds them, numbered on from the
        scan's last point) join the reconstruction; a gap in the numbering does not."""
        assert self.grid is not None
        for p, x, y in sorted(zip(points.tolist(), xs, ys, strict=True)):
            if p != self.n_points or not np.isfinite([x, y]).all():
                continue
            corner = self.grid.to_pixels(np.array([[x, y]]))
            h = self._probe.shape[-1]
            inside = (corner >= 0).all() and (corner[0] + h < np.asarray(self.grid.shape)).all()
            if not inside:
                self.log.warning(
                    "added point %d at (%.3g, %.3g) m lies outside the object array: not used",
                    p,
                    x,
                    y,
                )
                continue
            self.n_points += 1
            self._positions_px = np.concatenate([self._positions_px, corner])
            if self.stream is not None:
                self.stream.add_points(corner)

    def _probe_estimate(self, data: dict) -> None:
        """The stxm stage's probe estimate: the starting probe when asked for, before iterating."""
        if self._probe_ready or self.grid is None:
            return
        probe = np.asarray(data["probe"][-1], np.complex64)
        if probe.shape != self._probe.shape[-2:]:
            self.log.warning(
                "probe estimate of shape %s ignored: the frames are %s",
                probe.shape,
                self._probe.shape[-2:],
            )
            return
        self._probe = probe
        self._probe_ready = True
        self.log.info("starting from the probe estimated from %d frames", data["n_frames"][-1])
        self._begin(None)  # the estimate carries the data's scale

    def stop(self, doc: RunStop) -> None:
        if self._out is None or doc["run_start"] != self._out.start_doc["source_run"]:
            return
        if self.stream is None:
            if not self._probe_ready:
                self.log.warning("no probe estimate came: starting from the zone plate")
                self._probe_ready = True
            if not self._pending:
                self._finish(None)
                return
            counts = np.concatenate([f.sum(axis=(1, 2)) for _, f, _ in self._pending])
            self._begin(float(counts.mean()))
        assert self.stream is not None
        self.stream.finish()

    # -- what the solver's thread reports, published on the stage's thread ---------------
    def _publish_iteration(self, iteration: int, error: float, n_measured: int) -> None:
        self.last_iteration = (int(iteration), float(error), int(n_measured))
        if self._out is None or self._out.stopped:
            return
        self._out.event(
            "iteration",
            {
                "iteration": int(iteration),
                "data_error": float(error),
                "n_measured": int(n_measured),
                "elapsed": time.monotonic() - self._t0,
            },
        )

    def _publish_snapshot(self, snap: Snapshot) -> None:
        if self._out is None or self._out.stopped:
            return
        self._out.event(
            "snapshot",
            {
                "object": snap.object,
                "probe": snap.probe,
                "iteration": int(snap.iteration),
                "n_measured": int(snap.n_measured),
                "data_error": float(snap.data_error),
                "final": bool(snap.final),
                "frame_errors": snap.frame_errors.astype(np.float32),
                "frc_resolution_nm": self._nm(snap.frc.resolution_px) if snap.frc else np.nan,
                "stop_reason": self.stream.stop_reason if self.stream and snap.final else "",
            },
        )
        if snap.final:
            self._final_snap = snap

    def _nm(self, px: float) -> float:
        return float(px * self.grid.pixel_size_m * 1e9) if self.grid is not None else np.nan

    def _publish_frc(self, frc: FRC, iteration: int, final: bool) -> None:
        """The half-set FRC: resolution in nm, and the curve against spatial frequency (1/nm)."""
        if self._out is None or self._out.stopped or self.grid is None:
            return
        px_nm = self.grid.pixel_size_m * 1e9
        # on a fixed grid of FRC_POINTS frequencies up to Nyquist: every event of the stream
        # has the same shapes (the object's size, and so the rings, may change)
        grid = np.linspace(0, 0.5, FRC_POINTS)
        self.frc = {
            "resolution_nm": self._nm(frc.resolution_px),
            "frequency_per_nm": (grid / px_nm).astype(np.float32),
            "correlation": np.interp(grid, frc.frequency, frc.correlation).astype(np.float32),
            "half_bit": np.interp(grid, frc.frequency, frc.half_bit).astype(np.float32),
            "iteration": int(iteration),
            "final": bool(final),
        }
        self._out.event("frc", dict(self.frc))

    def _finish(self, snap: Snapshot | None) -> None:
        assert self._out is not None
        if snap is not None and self.stream is not None and self.grid is not None:
            solver = self.stream.solver
            self.result = ReconstructionResult(
                object=snap.object,
                probe=snap.probe,
                grid=self.grid,
                errors=snap.errors,
                weights=solver.weights.copy(),
                illumination=to_numpy(solver.illumination()),
                flags=dict(self.flags),
                iterations=snap.iteration,
                seconds=time.monotonic() - self._t0,
                frc_resolution_m=(
                    self.frc["resolution_nm"] * 1e-9 if self.frc is not None else float("nan")
                ),
                stop_reason=self.stream.stop_reason,
            )
        elif self.stream is not None and self.stream.error is not None:
            self.errors.append(f"solver failed: {self.stream.error!r}")
        failed = self.stream is not None and self.stream.error is not None
        self._out.stop("fail" if failed else "success", "; ".join(self.errors[-1:]))
        self.close()
