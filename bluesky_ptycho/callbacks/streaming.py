"""Reconstruction that runs while frames arrive: a solver iterated by a background thread.

:class:`StreamingReconstruction` owns a :class:`~.solvers.Solver` and a
worker thread. Any thread hands it frames (:meth:`add_frames`), flags
(:meth:`flag`) and new points (:meth:`add_points`); they are queued and
applied between iterations, so the solver is never touched by two threads.
The worker iterates as long as there are frames, publishes a
:class:`Snapshot` after the first iteration that ends ``snapshot_interval``
seconds or more after the last one (a frame is in the live image at most
one interval plus one iteration after it arrived), and, once
:meth:`finish` says no more frames come — when the data error had already
stopped falling while the scan ran (less than 1 % in three iterations), it
lowers the solver's step (a quarter, then halved every iteration: the live
image is at its noise floor, and smaller steps average the noise out) —
iterates until the object stops changing (the solver's :meth:`~bluesky_ptycho.core.solvers.Solver.convergence`
rule: its estimated remaining change below the options' ``stop_tolerance``),
at most ``final_iterations`` more, and publishes the final snapshot.
Callbacks run on the worker thread.

The thread is a :class:`~bluesky_ptycho.threads.Worker`: what the other
threads hand over are its items, and an iteration is its idle work, done
while the solver is ready. Unlike a stage's worker, an error ends the
reconstruction (:meth:`StreamingReconstruction.wait` raises it).

NumPy's FFTs and array loops release the GIL, so on CPU the worker runs
beside the thread that receives frames; on CuPy it only queues kernels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bluesky_ptycho.core.arrays import to_numpy
from bluesky_ptycho.core.metrics import FRC
from bluesky_ptycho.core.solvers import Solver
from bluesky_ptycho.core.solvers.convergence import Convergence
from bluesky_ptycho.core.solvers.halves import half_set_frc
from bluesky_ptycho.threads import Worker

log = logging.getLogger("bluesky_ptycho.callbacks.streaming")


@dataclass
class Snapshot:
    """The reconstruction at one moment (host arrays).

    Attributes
    ----------
    object : (Y, X) complex64
    probe : (M, H, W) complex64
    iteration : int
        Iterations done.
    n_measured : int
        Frames in use.
    newest : int
        Frames received so far (the newest frame this snapshot includes is
        the ``newest``-th to arrive).
    data_error : float
        Data error of the last iteration (NaN before the first).
    errors : list of float
        Data error of every iteration so far.
    elapsed : float
        Seconds since the reconstruction started.
    final : bool
        True for the last snapshot, after the final iterations.
    origin_shift : (int, int)
        Rows and columns the object array grew by at its top and left.
    positions : (N, 2) float64
        View corners (refined, when position refinement is on).
    frame_errors : (N,) float64
        Each frame's data error against this model (NaN: not measured). The
        snapshots between :meth:`StreamingReconstruction.finish` and the final
        one repeat the errors of the last snapshot before it (one forward pass
        over every frame costs a third of an iteration; no frame comes in then,
        and the final snapshot has them afresh).
    frc : FRC or None
        The latest Fourier ring correlation of the even and odd frames'
        objects (:func:`~bluesky_ptycho.core.solvers.halves.half_set_frc`),
        resolution in object pixels; None before the first.
    frc_iteration : int
        The iteration at which that FRC was taken (-1: none yet).
    """

    object: np.ndarray
    probe: np.ndarray
    iteration: int
    n_measured: int
    newest: int
    data_error: float
    errors: list[float]
    elapsed: float
    final: bool
    origin_shift: tuple[int, int] = (0, 0)
    positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    frame_errors: np.ndarray = field(default_factory=lambda: np.zeros(0))
    frc: FRC | None = None
    frc_iteration: int = -1


class StreamingReconstruction:
    """Iterate *solver* in a background thread while frames arrive (module docstring).

    Parameters
    ----------
    solver : Solver
        Allocated for the whole scan.
    snapshot_interval : float
        Seconds between snapshots while iterating (> 0).
    final_iterations : int
        Most iterations after :meth:`finish` (>= 0); fewer when the object
        has converged (the solver's ``stop_tolerance``; 0 there: all of them).
    min_frames : int
        Frames needed before the first iteration (all of them if the scan
        has fewer).
    max_live_iterations : int
        Cap on iterations before :meth:`finish` (0: none).
    on_snapshot : callable(Snapshot), optional
    on_iteration : callable(iteration, data_error, n_measured), optional
    on_error : callable(exception), optional
        Called if the solver fails (the error is also raised by :meth:`wait`).
    frc_interval : float
        Seconds between half-set FRCs while the scan runs (each costs about
        as much as six iterations; 0: none while it runs). The next snapshot
        carries it.
    final_frc : bool
        Take the FRC once more after the final snapshot (the final image is
        not held up by it) and hand it to *on_frc*.
    on_frc : callable(FRC, iteration, final), optional
        Called with each FRC taken.
    on_end : callable(), optional
        Called last, after the final snapshot and FRC (not after an abort or
        an error).
    """

    def __init__(
        self,
        solver: Solver,
        snapshot_interval: float = 1.0,
        final_iterations: int = 40,
        min_frames: int = 16,
        max_live_iterations: int = 0,
        on_snapshot: Callable[[Snapshot], Any] | None = None,
        on_iteration: Callable[[int, float, int], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        frc_interval: float = 30.0,
        final_frc: bool = True,
        on_frc: Callable[[FRC, int, bool], Any] | None = None,
        on_end: Callable[[], Any] | None = None,
    ) -> None:
        if not snapshot_interval > 0:
            raise ValueError(f"snapshot_interval={snapshot_interval} must be positive (seconds)")
        if final_iterations < 0:
            raise ValueError(f"final_iterations={final_iterations} must be >= 0")
        if min_frames < 1:
            raise ValueError(f"min_frames={min_frames} must be >= 1")
        if not frc_interval >= 0:
            raise ValueError(f"frc_interval={frc_interval} must be >= 0 (seconds; 0: none live)")
        self.solver = solver
        self.snapshot_interval = float(snapshot_interval)
        self.final_iterations = int(final_iterations)
        self.min_frames = int(min_frames)
        self.max_live_iterations = int(max_live_iterations)
        self.on_snapshot = on_snapshot
        self.on_iteration = on_iteration
        self.on_error = on_error
        self.frc_interval = float(frc_interval)
        self.final_frc = bool(final_frc)
        self.on_frc = on_frc
        self.on_end = on_end
        #: lower the step at finish() (:meth:`~bluesky_ptycho.core.solvers.Solver.anneal`)
        self.anneal = True
        self.frc: FRC | None = None
        self._frame_errors: np.ndarray | None = None
        self.frc_iteration = -1
        self._last_frc = time.monotonic()
        self._finished = False
        self._abort = False
        self._ended = False  # the final snapshot is out, or an error came: nothing more is done
        self._received = 0
        self._after = 0  # iterations since finish()
        self._stop: Convergence | None = None  # the final iterations' stopping rule
        self.final: Snapshot | None = None
        #: why the final iterations ended ("" until they have)
        self.stop_reason = ""
        self.error: BaseException | None = None
        self._t0 = time.monotonic()
        self._last_snapshot = -np.inf
        self._worker = Worker(
            "streaming-reconstruction",
            lambda item: self._guarded(self._take, item),
            idle=lambda: self._guarded(self._step),
            poll=lambda: 0 if self._has_work() else None,
            log=log,
        )
        #: set when the thread has ended (the final snapshot, an abort or an error)
        self.done = self._worker.done

    # -- any thread -------------------------------------------------------------
    def add_frames(self, indices: Any, intensities: Any, positions: Any = None) -> None:
        """Queue frames for the solver (see :meth:`Solver.add_frames`)."""
        self._put(("frames", (indices, intensities, positions)))

    def flag(self, indices: Any) -> None:
        """Queue zero weight for frames (bad, or to be re-measured)."""
        self._put(("flag", indices))

    def add_points(self, positions: Any, reply: Callable[[np.ndarray], Any] | None = None) -> None:
        """Queue new scan points; *reply(indices)* is called with their indices once added."""
        self._put(("points", (positions, reply)))

    @property
    def finishing(self) -> bool:
        """True once the worker has taken :meth:`finish`: the final iterations run."""
        return self._finished

    def finish(self) -> None:
        """No more frames: run the final iterations, publish the final snapshot, stop."""
        self._put(("finish", None))

    def abort(self) -> None:
        """Stop after the current iteration, without the final iterations."""
        self._abort = True
        self._worker.drain()
        self._worker.close()

    def wait(self, timeout: float | None = None) -> Snapshot | None:
        """Wait for the end; return the final snapshot (None on timeout or abort).

        Raises the worker's error if it failed.
        """
        self.done.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.final

    def _put(self, item: tuple[str, Any]) -> None:
        if self.done.is_set():
            raise RuntimeError("the streaming reconstruction has ended: start a new one")
        self._worker.put(item)

    # -- the worker ---------------------------------------------------------------
    def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run *fn(*args)* unless the reconstruction has ended or is aborted; an error in it
        ends the reconstruction."""
        if self._ended or self._abort:
            return
        try:
            fn(*args)
        except BaseException as err:  # reported to wait() and logged, never lost
            self.error = err
            log.exception("streaming reconstruction failed")
            try:
                if self.on_error is not None:
                    self.on_error(err)
            finally:
                self._end()

    def _end(self) -> None:
        """Nothing more is done: what is queued is dropped and the thread ends."""
        self._ended = True
        self._worker.drain()
        self._worker.close()

    def _take(self, item: tuple[str, Any]) -> None:
        s = self.solver
        kind, arg = item
        if kind == "frames":
            idx, data, pos = arg
            s.add_frames(idx, data, pos)
            self._received += len(np.atleast_1d(to_numpy(idx)))
        elif kind == "flag":
            s.flag(arg)
        elif kind == "points":
            positions, reply = arg
            new = s.add_points(positions)
            if reply is not None:
                reply(new)
        elif kind == "finish":
            self._finished = True

    def _ready(self) -> bool:
        s = self.solver
        if s.n_measured == 0:
            return False
        if not self._finished and s.n_measured < min(self.min_frames, len(s.weights)):
            return False
        if not self._finished and self.max_live_iterations:
            return s.iteration < self.max_live_iterations
        return True

    def _has_work(self) -> bool:
        """True while there is iterating (or the end) to do without waiting for an item."""
        return not (self._ended or self._abort) and (self._finished or self._ready())

    def _step(self) -> None:
        """One iteration once the queue is empty; after finish(), the end when it is time."""
        if self._finished and self._stop is None:
            self._stop = self.solver.convergence().after(self.solver)
            if self.anneal:
                self.solver.anneal()  # now, or once the full step stops paying
        stop, after = self._stop, self._after
        if self._finished and (
            after >= self.final_iterations
            or self.solver.n_measured == 0
            or (after and stop is not None and stop.update(self.solver))
        ):
            self.stop_reason = (
                stop.reason if stop is not None and stop.reason else f"{after} final iterations"
            )
            self._final()
            return
        if not self._ready():
            return
        err = self.solver.iterate(1)
        if self._finished:
            self._after += 1
        if self.solver.object_restarted_at == self.solver.iteration - 1:
            log.info(
                "iteration %d: the probe settled %.2f (relative distance) from its start; the "
                "object restarted flat to be rebuilt with it (option object_restart)",
                self.solver.iteration, self.solver.probe_distance(),
            )  # fmt: skip
        if err and self.on_iteration is not None:
            self.on_iteration(self.solver.iteration, err[0], self.solver.n_measured)
        if time.monotonic() - self._last_snapshot >= self.snapshot_interval:
            if (
                self.frc_interval
                and not self._finished
                and time.monotonic() - self._last_frc >= self.frc_interval
            ):
                self._take_frc(final=False)
            self._publish(final=False)

    def _final(self) -> None:
        """The final snapshot, the final FRC, then on_end; the thread ends."""
        try:
            if not self._abort:
                self.final = self._publish(final=True)
                if self.final_frc and self.solver.n_measured:
                    self._take_frc(final=True)
                    self.final.frc, self.final.frc_iteration = self.frc, self.frc_iteration
                if self.on_end is not None:
                    self.on_end()
        finally:
            self._end()

    def _take_frc(self, final: bool) -> None:
        self._last_frc = time.monotonic()
        frc = half_set_frc(self.solver)
        if frc is None:
            return
        self.frc, self.frc_iteration = frc, self.solver.iteration
        if self.on_frc is not None:
            self.on_frc(frc, self.solver.iteration, final)

    def snapshot(self, final: bool = False) -> Snapshot:
        """The current state as host arrays (call from the worker, or after the end)."""
        s = self.solver
        return Snapshot(
            object=to_numpy(s.object).copy(),
            probe=to_numpy(s.probe).copy(),
            iteration=s.iteration,
            n_measured=s.n_measured,
            newest=self._received,
            data_error=s.errors[-1] if s.errors else float("nan"),
            errors=list(s.errors),
            elapsed=time.monotonic() - self._t0,
            final=final,
            origin_shift=s.origin_shift,
            positions=s.positions.copy(),
            frame_errors=self._errors_per_frame(final),
            frc=self.frc,
            frc_iteration=self.frc_iteration,
        )

    def _errors_per_frame(self, final: bool) -> np.ndarray:
        s = self.solver
        if not s.n_measured:
            return np.full(len(s.weights), np.nan)
        last = self._frame_errors
        if final or not self._finished or last is None or len(last) != len(s.weights):
            self._frame_errors = last = np.asarray(s.frame_errors())
        return last.copy()  # each snapshot its own array (subscribers may keep or change it)

    def _publish(self, final: bool) -> Snapshot:
        self._last_snapshot = time.monotonic()
        snap = self.snapshot(final)
        if self.on_snapshot is not None:
            self.on_snapshot(snap)
        return snap
