"""What every solver shares: the object, the probe modes, positions, frames and weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from bluesky_ptycho.core.arrays import Array, fft2, get_xp, ifft2, ifftshift2, to_numpy
from bluesky_ptycho.core.ptycho import (
    as_modes,
    extract_patches,
    scatter_add,
    shift_ramps,
    split_positions,
)
from bluesky_ptycho.core.solvers.convergence import Convergence
from bluesky_ptycho.core.solvers.options import SolverOptions

#: :meth:`Solver.anneal` lowers the step at once unless the data error fell by more than
#: this fraction over the last three iterations (the image still far from its solution) ...
ANNEAL_AT_ONCE = 0.05
#: ... and then after the first iteration after it that lowers the error by less than this
ANNEAL_GAIN = 0.002


class FrameStore:
    """A per-frame array ``(N, *shape)``: on the device, or on the host moved in blocks.

    On the device, :meth:`get` gathers views. On the host (scans larger than
    the device's memory), the array lives in host memory (pinned on CuPy, for
    fast copies) and :meth:`get`/:meth:`put` move one block per call: the
    solvers ask for a batch at a time, so device memory holds a batch, never
    the scan.
    """

    def __init__(self, xp: Any, n: int, shape: tuple[int, ...], dtype: Any, on_device: bool):
        self.xp = xp
        self.on_device = on_device
        self.dtype = np.dtype(dtype)
        if on_device:
            self.array = xp.zeros((n, *shape), dtype=self.dtype)
        else:
            self.array = _host_empty(xp, (n, *shape), self.dtype)
            self.array[...] = 0

    def get(self, idx: np.ndarray) -> Array:
        """Rows *idx* (host ints, sorted) as a device array."""
        if self.on_device:
            return self.array[self.xp.asarray(idx)] if self.xp is not np else self.array[idx]
        return self.xp.asarray(self.array[idx])

    def put(self, idx: np.ndarray, values: Array) -> None:
        """Write rows *idx* (host ints) from a device array."""
        if self.on_device:
            self.array[self.xp.asarray(idx) if self.xp is not np else idx] = values
        else:
            self.array[idx] = to_numpy(values)

    def grow(self, n_new: int) -> None:
        """Append *n_new* zero rows."""
        xp = self.xp if self.on_device else np
        extra = xp.zeros((n_new, *self.array.shape[1:]), dtype=self.dtype)
        self.array = xp.concatenate([self.array, extra])


def _host_empty(xp: Any, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if xp is np:
        return np.empty(shape, dtype)
    import cupyx

    return cupyx.empty_pinned(shape, dtype)


def device_budget(xp: Any, requested: int | None) -> float:
    """Bytes of per-frame arrays a solver may keep on the device."""
    if requested is not None:
        return float(requested)
    if xp is np:
        return float("inf")
    free, _total = xp.cuda.runtime.memGetInfo()
    return 0.7 * free


class Solver:
    """State and data handling shared by every algorithm (see the module docstring).

    Parameters
    ----------
    positions : (N, 2) array
        View corners (row, column) in object pixels, sub-pixel allowed.
    object_shape : (int, int)
        Object array shape.
    probe : (H, W) or (M, H, W) complex array
        Initial probe (or modes); its array module is the one used throughout.
    options : the solver's options dataclass, optional
    detector_mask : (H, W) bool array, optional
        False where detector pixels are invalid (DC at the centre): the model
        is kept there and they count in no error.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[SolverOptions]] = SolverOptions
    #: per-frame complex arrays of M modes the algorithm stores besides the amplitudes
    stored_waves: ClassVar[bool] = False

    def __init__(
        self,
        positions: Array,
        object_shape: tuple[int, int],
        probe: Array,
        options: SolverOptions | None = None,
        detector_mask: Array | None = None,
    ) -> None:
        xp = get_xp(probe)
        self.xp = xp
        self.options = options if options is not None else self.Options()
        if not isinstance(self.options, self.Options):
            raise TypeError(
                f"{type(self).__name__} takes {self.Options.__name__}, "
                f"not {type(self.options).__name__}"
            )
        self.probe = _initial_modes(
            xp.asarray(as_modes(probe), dtype=xp.complex64),
            self.options.probe_modes,
            self.options.mode_power,
            self.options.seed,
        )
        m, h, w = self.probe.shape
        self.frame_shape = (h, w)
        self.object = xp.ones(tuple(object_shape), dtype=xp.complex64)
        self.positions = np.array(to_numpy(positions), dtype=np.float64).reshape(-1, 2)
        self._check_positions(self.positions)
        n = len(self.positions)
        per_frame = h * w * 4 + (m * h * w * 8 if self.stored_waves else 0)
        on_device = n * per_frame <= device_budget(xp, self.options.device_memory_bytes)
        # amplitudes in FFT order (DC at the corner), as the model produces them
        self.amplitudes = FrameStore(xp, n, (h, w), np.float32, on_device)
        self.weights = np.zeros(n, dtype=np.float32)
        self.mask = (
            xp.ones((h, w), dtype=bool)
            if detector_mask is None
            else ifftshift2(xp.asarray(detector_mask, dtype=bool))
        )
        self.iteration = 0
        self.errors: list[float] = []
        #: relative object change of each iteration over the lit pixels (see .convergence)
        self.changes: list[float] = []
        #: relative probe change of each iteration
        self.probe_changes: list[float] = []
        #: multiplies the object and probe steps; lowered when the changes stop shrinking
        self.step_scale = 1.0
        #: the iteration from which positions are refined (None: not yet)
        self.positions_from: int | None = None
        self._lit: Array | None = None
        self._adapted_at = 0
        self._annealing = False
        self._anneal_waits = False  # anneal() asked; the step is lowered once gains are small
        self._anneal_from = 0  # the number of data errors when anneal() was asked
        self._anneal_start = 0.25
        self._measured_n, self._measured_at = 0, 0
        self._lit_at = (-1, -1)
        self._probe_start = self.probe[0].copy()
        self._restart_decided = False
        #: the iteration in which the object restarted flat (see object_restart); None: it has not
        self.object_restarted_at: int | None = None
        self._rng = np.random.default_rng(self.options.seed)

    # -- data in ------------------------------------------------------------
    def _check_positions(self, positions: np.ndarray) -> None:
        h, w = self.frame_shape
        ylim, xlim = self.object.shape[0] - h, self.object.shape[1] - w
        p = positions
        bad = (p[:, 0] < 0) | (p[:, 1] < 0) | (p[:, 0] >= ylim) | (p[:, 1] >= xlim)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} view(s) fall outside the object array of shape "
                f"{self.object.shape} (first at corner {p[bad][0].round(2).tolist()} px): "
                "allocate it with object_grid() from all positions, or add them with add_points()"
            )

    def add_frames(
        self, indices: Array, intensities: Array, positions: Array | None = None
    ) -> None:
        """Give measured frames to the solver (weight 1 from now on).

        A frame given again for the same point (a rescan) replaces the old one.

        Parameters
        ----------
        indices : (k,) int
            Scan point of each frame.
        intensities : (k, H, W) float
            Photon counts, DC at the centre. Negative values are clipped to 0.
        positions : (k, 2) float, optional
            Measured view corners (object pixels) replacing the planned ones.
        """
        xp = self.xp
        idx = np.asarray(to_numpy(indices), dtype=np.int64).reshape(-1)
        data = xp.asarray(intensities, dtype=xp.float32)
        if data.shape != (len(idx), *self.frame_shape):
            raise ValueError(
                f"{len(idx)} frame(s) of shape {tuple(data.shape)} given; expected "
                f"({len(idx)}, {self.frame_shape[0]}, {self.frame_shape[1]})"
            )
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self.weights)):
            raise ValueError(
                f"frame index out of range 0..{len(self.weights) - 1}: {idx.tolist()}; "
                "append new points with add_points() first"
            )
        if positions is not None:
            pos = np.asarray(to_numpy(positions), dtype=np.float64).reshape(len(idx), 2)
            self._check_positions(pos)
            self.positions[idx] = pos
        order = np.argsort(idx)
        idx = idx[order]
        self.amplitudes.put(idx, ifftshift2(xp.sqrt(xp.maximum(data[xp.asarray(order)], 0))))
        self._frames_added(idx)
        self.weights[idx] = 1

    def _frames_added(self, idx: np.ndarray) -> None:
        """Hook: algorithms with per-frame state initialise it here."""

    def flag(self, indices: Array) -> None:
        """Give frames zero weight (bad, or to be re-measured)."""
        self.weights[np.asarray(to_numpy(indices), dtype=np.int64)] = 0

    def add_points(self, positions: Array) -> np.ndarray:
        """Append scan points (view corners in the current object pixels); return their indices.

        Points outside the object array grow it (new pixels 1, i.e. empty);
        growing at the top or left shifts every position by the same whole
        number of pixels, given by :attr:`origin_shift` (add it to a grid
        origin in pixels to follow).
        """
        xp = self.xp
        pos = np.asarray(to_numpy(positions), dtype=np.float64).reshape(-1, 2)
        h, w = self.frame_shape
        ny, nx = self.object.shape
        top = int(max(0, np.ceil(-pos[:, 0].min()) + 1)) if len(pos) else 0
        left = int(max(0, np.ceil(-pos[:, 1].min()) + 1)) if len(pos) else 0
        bottom = int(max(0, np.floor(pos[:, 0].max()) + h + 1 - ny)) if len(pos) else 0
        right = int(max(0, np.floor(pos[:, 1].max()) + w + 1 - nx)) if len(pos) else 0
        if top or left or bottom or right:
            grown = xp.ones((ny + top + bottom, nx + left + right), dtype=xp.complex64)
            grown[top : top + ny, left : left + nx] = self.object
            self.object = grown
            shift = np.array([top, left], dtype=np.float64)
            self.positions += shift
            pos = pos + shift
            self.origin_shift = (self.origin_shift[0] + top, self.origin_shift[1] + left)
        self._check_positions(pos)
        start = len(self.positions)
        self.positions = np.concatenate([self.positions, pos])
        self.weights = np.concatenate([self.weights, np.zeros(len(pos), np.float32)])
        self.amplitudes.grow(len(pos))
        self._points_added(len(pos))
        return np.arange(start, start + len(pos))

    origin_shift: tuple[int, int] = (0, 0)

    def _points_added(self, n_new: int) -> None:
        """Hook: *n_new* points were appended."""

    @property
    def n_measured(self) -> int:
        """Number of frames with non-zero weight."""
        return int((self.weights > 0).sum())

    @property
    def measured(self) -> np.ndarray:
        """Indices of the frames with non-zero weight."""
        return np.flatnonzero(self.weights > 0)

    # -- iterating ---------------------------------------------------------------
    def iterate(
        self, iterations: int = 1, should_stop: Callable[[], bool] | None = None
    ) -> list[float]:
        """Run *iterations* passes over the measured frames; return the data error of each.

        The data error is ``Σ (|Ψ| − √I)² / Σ I`` over the valid pixels of the
        measured frames (``|Ψ|² = Σ_m |Ψ_m|²``), accumulated during the pass.
        """
        out = []
        for _ in range(iterations):
            if should_stop is not None and should_stop():
                break
            measured = self.measured
            if len(measured) == 0:
                break
            if len(measured) != self._measured_n:  # new frames: new ground, full steps
                self._measured_n, self._measured_at = len(measured), self.iteration
                self.step_scale = 1.0
                self._annealing = self._anneal_waits = False
            self._gate_positions()
            before, probe_before = self.object.copy(), self.probe.copy()
            err = self._iteration(measured)
            if self.probe.shape[0] > 1 and self._update_probe:
                self.probe = orthogonalize_modes(self.probe)
            self.iteration += 1
            self.errors.append(err)
            self._track(before, probe_before)
            out.append(err)
        return out

    def anneal(self, start: float = 0.25) -> None:
        """No more frames will come: lower the step to *start* and halve it every iteration
        down to ``min_step_scale`` (the image is near its solution; smaller steps average
        the noise instead of waiting for the data error to stall).

        The step is lowered at once when the data error fell by at most
        :data:`ANNEAL_AT_ONCE` over the last three iterations; otherwise (fewer
        iterations, or the image still far off, e.g. a scan that ended before the
        reconstruction caught up) the full step goes on while it pays, and is lowered
        after the first iteration that lowers the data error by less than
        :data:`ANNEAL_GAIN` (compared between iterations after this call: the first one
        still fits the scan's last frames). Frames added later restore the full step; the
        frames already added when this is called do not (a scan's last frames arrive
        during its last live iteration: they would otherwise undo the anneal at the
        first final iteration).
        """
        self._annealing = True
        self._anneal_start = start
        self._anneal_from = len(self.errors)
        e = self.errors
        self._anneal_waits = len(e) < 4 or e[-1] < (1 - ANNEAL_AT_ONCE) * e[-4]
        if not self._anneal_waits:
            self.step_scale = min(self.step_scale, start)
        measured = len(self.measured)
        if measured != self._measured_n:
            self._measured_n, self._measured_at = measured, self.iteration

    def convergence(self, tolerance: float | None = None, max_iterations: int = 0) -> Convergence:
        """A stopping rule for this solver (:class:`~.convergence.Convergence`)."""
        tol = self.options.stop_tolerance if tolerance is None else tolerance
        return Convergence(tolerance=tol, max_iterations=max_iterations)

    def _lit_pixels(self) -> Array:
        """Pixels lit above 10 % of the brightest (recomputed as frames come, every 20 iterations)."""
        key = (self.n_measured, self.iteration // 20)
        if self._lit is None or key != self._lit_at or self._lit.shape != self.object.shape:
            ill = self.illumination()
            self._lit = ill > 0.1 * self.xp.max(ill)
            self._lit_at = key
        return self._lit

    def _track(self, before: Array, probe_before: Array) -> None:
        """Record the object's and the probe's change; adapt the step; gate position refinement."""
        xp = self.xp
        opt = self.options
        if before.shape == self.object.shape:
            lit = self._lit_pixels()
            diff = xp.where(lit, self.object - before, 0)
            norm = float(xp.linalg.norm(xp.where(lit, self.object, 0)))
            self.changes.append(float(xp.linalg.norm(diff)) / max(norm, 1e-30))
        else:  # the object grew (points added): no comparison this time
            self.changes.append(float("nan"))
        if self.object_restarted_at is not None and self.iteration - 1 == self.object_restarted_at:
            self.changes[-1] = float("nan")  # from the old object to the new: no convergence news
        dp = float(xp.linalg.norm(self.probe - probe_before))
        self.probe_changes.append(dp / max(float(xp.linalg.norm(self.probe)), 1e-30))
        # the data error has stopped falling while the object still moves (the noise floor
        # of a stochastic solver): a smaller step averages over more frames, as a
        # decreasing step does in stochastic approximation
        e = self.errors
        if self._annealing and self._anneal_waits:
            if len(e) - self._anneal_from >= 2 and e[-1] > (1 - ANNEAL_GAIN) * e[-2]:
                self._anneal_waits = False  # the full step no longer pays: anneal now
                self.step_scale = min(self.step_scale, self._anneal_start)
                self.changes.append(float("nan"))
                return
        elif self._annealing and self.step_scale > opt.min_step_scale:
            self.step_scale = max(self.step_scale * 0.5, opt.min_step_scale)
            self.changes.append(float("nan"))  # a new regime: ratios start afresh
            return
        if (
            opt.step_adapt
            and self.iteration >= opt.step_adapt_start
            and len(e) >= 4
            and e[-1] > opt.step_adapt_ratio * e[-4]
            and self.step_scale > opt.min_step_scale
            and self.iteration - max(self._adapted_at, self._measured_at) >= 3
        ):
            self.step_scale = max(self.step_scale * 0.5, opt.min_step_scale)
            self._adapted_at = self.iteration
            self.changes.append(float("nan"))  # a new regime: ratios start afresh

    def _gate_positions(self) -> None:
        """Before an iteration: restart the object (object_restart), start refining positions."""
        gate = self.options.probe_settled
        started = self._update_probe and self.iteration >= self.options.probe_update_start + 2
        probe_settled = (
            gate > 0
            and started
            and len(self.probe_changes) >= 2
            and max(self.probe_changes[-2:]) < gate
        )
        if probe_settled and not self._restart_decided:
            self._restart_decided = True  # decided once: at the first settled iteration
            limit = self.options.object_restart
            if limit > 0 and not self.stored_waves and not self._annealing:
                if self.probe_distance() > limit:
                    self._restart_object()
                    return
        s = self.options.position_refinement_start
        if self.positions_from is not None or s < 0 or self.iteration < s:
            return
        restart = self.object_restarted_at
        if restart is not None and self.iteration < restart + 3:
            return  # two probe updates around the new object first
        never = self.options.probe_update_start < 0
        if gate == 0 or never or probe_settled:
            self.positions_from = self.iteration

    def probe_distance(self) -> float:
        """How far the first probe mode is from the starting one: ``‖P − cP₀‖ / ‖P‖`` with the
        complex *c* that makes it least (global phase and scale removed), 0 to 1."""
        xp = self.xp
        p, p0 = self.probe[0], self._probe_start
        n0 = float(xp.vdot(p0, p0).real)
        n = float(xp.vdot(p, p).real)
        if n0 <= 0 or n <= 0:
            return 0.0
        overlap = abs(complex(xp.vdot(p0, p))) ** 2 / (n0 * n)
        return float(np.sqrt(max(0.0, 1.0 - overlap)))

    def _restart_object(self) -> None:
        """The object restarts flat; the probe is held this iteration (see object_restart)."""
        self.object = self.xp.ones_like(self.object)
        self.object_restarted_at = self.iteration
        self._adapted_at = self.iteration + 2  # step_adapt compares data errors after it only
        self.step_scale = 1.0

    @property
    def _update_probe(self) -> bool:
        s = self.options.probe_update_start
        return s >= 0 and self.iteration >= s and self.iteration != self.object_restarted_at

    @property
    def _refine_positions(self) -> bool:
        return self.positions_from is not None and self.iteration >= self.positions_from

    def _iteration(self, measured: np.ndarray) -> float:
        raise NotImplementedError

    def frame_errors(self, batch: int = 64) -> np.ndarray:
        """Each frame's data error against the current model: ``Σ (|Ψ| − √I)² / Σ I``.

        A forward pass over the measured frames (no update). Returns ``(N,)``
        float64 on the host, NaN for frames not measured; the quality monitor
        looks for frames whose error stands far above their neighbours'.
        """
        xp = self.xp
        out = np.full(len(self.weights), np.nan)
        measured = self.measured
        for idx in _blocks(measured, batch):
            _corners, _ramps, probes, patches = self._views(idx)
            far = fft2(probes * patches[:, None])
            amp = xp.sqrt(xp.sum(far.real**2 + far.imag**2, axis=1))
            meas = self.amplitudes.get(idx)
            num = xp.sum(xp.where(self.mask, (amp - meas) ** 2, 0), axis=(1, 2))
            den = xp.sum(xp.where(self.mask, meas**2, 0), axis=(1, 2))
            out[idx] = to_numpy(num / xp.maximum(den, 1e-30))
        return out

    # -- shared pieces ----------------------------------------------------------------
    def _views(self, idx: np.ndarray) -> tuple[np.ndarray, Array, Array, Array]:
        """Corners (host), shift ramps (B, H, W), shifted probes (B, M, H, W), patches (B, H, W)."""
        corners, frac = split_positions(self.positions[idx])
        if frac.any():
            ramps = shift_ramps(frac, self.frame_shape, self.xp)
            probes = ifft2(fft2(self.probe)[None] * ramps[:, None])
        else:
            ramps = None
            probes = self.xp.broadcast_to(self.probe[None], (len(idx), *self.probe.shape))
        return corners, ramps, probes, extract_patches(self.object, corners, self.frame_shape)

    def _modulus(self, far: Array, meas: Array) -> tuple[Array, Array]:
        """The modulus constraint's factor on *far* (B, M, H, W), and the error sums (num, den)."""
        xp = self.xp
        amp = xp.sqrt(xp.sum(far.real**2 + far.imag**2, axis=1))
        scale = xp.where(self.mask, meas / xp.maximum(amp, 1e-12), 1).astype(xp.float32)
        num = xp.sum(xp.where(self.mask, (amp - meas) ** 2, 0))
        den = xp.sum(xp.where(self.mask, meas**2, 0))
        return scale[:, None], xp.stack([num, den])

    def _illumination_at_views(self, buffer: Array, corners: np.ndarray, probes: Array) -> Array:
        """The batch's summed illumination ``Σ_jm |S_j P_m|²`` on the object, seen at each view.

        Scattered into *buffer* (zeros, object shape) and cleared again.
        """
        xp = self.xp
        p2 = xp.sum(probes.real**2 + probes.imag**2, axis=1).astype(xp.float32)
        scatter_add(buffer, corners, p2)
        local = extract_patches(buffer, corners, self.frame_shape)
        _clear(buffer, corners, self.frame_shape)
        return local

    def _probe_direction(self, patches: Array, chi: Array, ramps: Array | None) -> Array:
        """``Σ_j S_j*(conj(O_j) χ_jm)`` (M, H, W): the probe's gradient direction from a batch."""
        xp = self.xp
        g = xp.conj(patches)[:, None] * chi
        if ramps is None:
            return xp.sum(g, axis=0)
        return ifft2(xp.sum(fft2(g) * xp.conj(ramps)[:, None], axis=0))

    def _position_step(self, idx: np.ndarray, probes: Array, patches: Array, chi: Array) -> None:
        """Move views along the least-squares shift that explains the exit-wave update χ."""
        xp = self.xp
        gy = xp.zeros_like(patches)
        gx = xp.zeros_like(patches)
        gy[:, 1:-1] = 0.5 * (patches[:, 2:] - patches[:, :-2])
        gx[:, :, 1:-1] = 0.5 * (patches[:, :, 2:] - patches[:, :, :-2])
        dy = probes * gy[:, None]
        dx = probes * gx[:, None]
        axes = (1, 2, 3)
        a11 = xp.sum(xp.abs(dy) ** 2, axis=axes)
        a22 = xp.sum(xp.abs(dx) ** 2, axis=axes)
        a12 = xp.sum((xp.conj(dy) * dx).real, axis=axes)
        b1 = xp.sum((xp.conj(dy) * chi).real, axis=axes)
        b2 = xp.sum((xp.conj(dx) * chi).real, axis=axes)
        det = a11 * a22 - a12**2
        det = xp.where(det > 1e-12 * (a11 * a22 + 1e-30), det, xp.inf)
        step = xp.stack([(a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det], axis=1)
        lim = self.options.max_position_step_px
        step = to_numpy(xp.clip(step, -lim, lim))
        new = self.positions[idx] + step
        h, w = self.frame_shape
        ylim, xlim = self.object.shape[0] - h - 1e-6, self.object.shape[1] - w - 1e-6
        new[:, 0] = np.clip(new[:, 0], 0, ylim)
        new[:, 1] = np.clip(new[:, 1], 0, xlim)
        self.positions[idx] = new

    def illumination(self) -> Array:
        """Total illumination ``Σ_j w_j Σ_m |S_j P_m|²`` on the object grid (Y, X) float32."""
        xp = self.xp
        out = xp.zeros(self.object.shape, dtype=xp.float32)
        for idx in _blocks(self.measured, 64):
            corners, _r, probes, _p = self._views(idx)
            scatter_add(out, corners, xp.sum(xp.abs(probes) ** 2, axis=1).astype(xp.float32))
        return out


def _clear(target: Array, corners: np.ndarray, shape: tuple[int, int]) -> None:
    """Zero what :func:`scatter_add` wrote at *corners* (cheaper than zeroing all)."""
    xp = get_xp(target)
    if xp is np:
        h, w = shape
        for cy, cx in corners:
            target[cy : cy + h, cx : cx + w] = 0
    else:
        target[...] = 0


def _blocks(indices: np.ndarray, size: int) -> list[np.ndarray]:
    return [np.sort(indices[i : i + size]) for i in range(0, len(indices), size)]


def _initial_modes(probe: Array, modes: int, power: float, seed: int) -> Array:
    """Pad *probe* (K, H, W) to *modes* modes: the first mode times smooth random phase screens.

    Each added mode carries *power* of the first mode's power; the set is
    orthogonalised, so the first mode keeps its shape.
    """
    xp = get_xp(probe)
    k, h, w = probe.shape
    if k >= modes:
        return probe[:modes].copy()
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    extra = []
    powers = [(0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (2, 1), (1, 2), (2, 2)]
    for i in range(modes - k):
        # low-order Hermite-like variations: the first mode times x, y, xy, …
        ky, kx = powers[i % len(powers)]
        weight = (xx - 0.5) ** kx * (yy - 0.5) ** ky + 0.01 * rng.standard_normal((h, w))
        extra.append(probe[0] * xp.asarray(weight.astype(np.float32)))
    out = xp.concatenate([probe, xp.stack(extra)]).astype(xp.complex64)
    out = orthogonalize_modes(out)
    p0 = float(xp.sum(xp.abs(out[0]) ** 2))
    for i in range(k, modes):
        out[i] *= np.float32(np.sqrt(power * p0 / max(float(xp.sum(xp.abs(out[i]) ** 2)), 1e-30)))
    return out


def orthogonalize_modes(probe: Array) -> Array:
    """Orthogonal modes spanning the same density matrix, strongest first (SVD).

    ``Σ_m P_m P_m*`` is unchanged; the modes become its eigenvectors scaled by
    the square roots of its eigenvalues.
    """
    xp = get_xp(probe)
    m, h, w = probe.shape
    flat = probe.reshape(m, h * w)
    # eigen-decomposition of the small M × M Gram matrix
    gram = flat.conj() @ flat.T
    vals, vecs = xp.linalg.eigh(gram)
    order = xp.argsort(vals)[::-1]
    vecs = vecs[:, order]
    return (vecs.T @ flat).reshape(m, h, w).astype(xp.complex64)


def mode_powers(probe: Array) -> np.ndarray:
    """Fraction of the total probe power in each mode."""
    p = to_numpy(get_xp(probe).sum(get_xp(probe).abs(as_modes(probe)) ** 2, axis=(1, 2)))
    return p / p.sum()
