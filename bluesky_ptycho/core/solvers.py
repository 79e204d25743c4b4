"""Ptychography solvers for scans whose frames arrive over time.

Four algorithms share one state (:class:`Solver`): the object, the probe as
``M`` incoherent modes (mixed states), the view positions, and the measured
amplitudes with a weight per frame. A solver is allocated for the whole
scan before its first frame; :meth:`Solver.add_frames` may be called at any
time, in any order, between iterations; frames not yet measured, or flagged,
have weight 0 and take no part. :meth:`Solver.add_points` appends scan
points (rescans), growing the object array when they fall outside it.

- :class:`RPIE` — mini-batch ePIE/rPIE (Maiden, Johnson & Li 2017; ePIE is
  ``alpha = beta = 1``): fast convergence per pass, the streaming default.
- :class:`DifferenceMap` — Thibault et al. 2009: projections with stored
  exit waves, object and probe from the overlap constraint each iteration.
- :class:`RAAR` — relaxed averaged alternating reflections (Luke 2005;
  SHARP's default): the same machinery, relaxed by ``beta`` (1 is DM).
- :class:`LSQML` — least-squares maximum likelihood (Odstrčil, Menzel &
  Guizar-Sicairos 2018): Gaussian or Poisson noise, preconditioned object
  and probe directions with optimal step lengths per view.

Every solver refines the probe (all modes, orthogonalised after each
iteration) from ``probe_update_start``; RPIE and LSQML also refine positions
from ``position_refinement_start``. Arrays are NumPy or CuPy, single
precision; per-frame arrays live in a :class:`FrameStore`, on the device or,
for scans larger than its memory, on the host and moved block by block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ._array import Array, fft2, get_xp, ifft2, ifftshift2, to_numpy
from .ptycho import as_modes, extract_patches, scatter_add, shift_ramps, split_positions


# --------------------------------------------------------------------------- options
@dataclass
class SolverOptions:
    """Options every solver has.

    Attributes
    ----------
    probe_modes : int
        Incoherent probe modes ``M`` (mixed states; 1 = a coherent probe).
        Missing modes are added to the initial probe with ``mode_power`` of
        its power each.
    mode_power : float
        Power of each added mode relative to the first, in (0, 1).
    probe_update_start : int
        First iteration (0-based) in which the probe is refined; a negative
        value never refines it.
    position_refinement_start : int
        First iteration in which positions are refined; negative: never.
        (RPIE and LSQML; DM and RAAR keep positions fixed.)
    max_position_step_px : float
        Largest position change of a view in one iteration, in pixels.
    seed : int
        Seed of the random view order and of added probe modes.
    device_memory_bytes : int or None
        Most bytes of per-frame arrays kept on the device; above it they stay
        on the host and move block by block. None: 70 % of the GPU's free
        memory on CuPy, no limit on NumPy. 0 forces the block path.
    """

    probe_modes: int = 1
    mode_power: float = 0.05
    probe_update_start: int = 1
    position_refinement_start: int = -1
    max_position_step_px: float = 0.5
    seed: int = 0
    device_memory_bytes: int | None = None

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.probe_modes < 1:
            raise ValueError(f"{name}.probe_modes={self.probe_modes} must be >= 1")
        if not 0 < self.mode_power < 1:
            raise ValueError(f"{name}.mode_power={self.mode_power} must lie in (0, 1)")
        if not self.max_position_step_px > 0:
            raise ValueError(
                f"{name}.max_position_step_px={self.max_position_step_px} must be positive (pixels)"
            )
        if self.device_memory_bytes is not None and self.device_memory_bytes < 0:
            raise ValueError(
                f"{name}.device_memory_bytes={self.device_memory_bytes} must be >= 0 or None (auto)"
            )

    def _check_range(self, field: str, lo: float, hi: float, lo_open: bool = True) -> None:
        v = getattr(self, field)
        ok = (lo < v if lo_open else lo <= v) and v <= hi
        if not ok:
            bracket = "(" if lo_open else "["
            raise ValueError(f"{type(self).__name__}.{field}={v} must lie in {bracket}{lo}, {hi}]")


@dataclass
class RpieOptions(SolverOptions):
    """Options of :class:`RPIE` (mini-batch ePIE/rPIE).

    Attributes
    ----------
    batch_size : int
        Views updated together. 1 is classic sequential ePIE; larger batches
        vectorise (and suit the GPU) at a small cost in convergence per pass.
    alpha : float
        rPIE regularisation of the object step, in (0, 1]: the denominator is
        ``(1 − α)·Σ|P|² + α·max Σ|P|²``. 1 gives ePIE's step.
    beta : float
        The same for the probe step.
    """

    batch_size: int = 16
    alpha: float = 0.1
    beta: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"RpieOptions.batch_size={self.batch_size} must be >= 1")
        self._check_range("alpha", 0, 1)
        self._check_range("beta", 0, 1)


@dataclass
class RaarOptions(SolverOptions):
    """Options of :class:`RAAR`.

    Attributes
    ----------
    beta : float
        Relaxation in (0, 1]: ``ψ ← β(ψ + P_F R_O ψ − P_O ψ) + (1 − β) P_O ψ``.
        1 is the difference map; 0.75–0.9 is steadier with noisy data.
    block_size : int
        Views processed together (memory, not convergence: the algorithm is
        global).
    overlap_iterations : int
        Alternating object/probe updates per overlap projection.
    regularization : float
        Added to the object and probe denominators, relative to their
        maximum, so weakly lit pixels do not blow up.
    fourier_relax : float
        Fourier relaxation (PtyPy's ``fourier_relax_factor``): a frame whose
        model already matches its counts to within this fraction of the
        brightest frame's amplitude is only pulled that far, not projected —
        the projection otherwise fits the noise and the iteration drifts. 0
        projects always.
    probe_support : float
        Radius of the probe's support as a fraction of the frame side (the
        probe is set to zero outside it after each update; a projection
        algorithm's probe otherwise drifts into the frame's corners). 0: none.
    """

    beta: float = 0.8
    block_size: int = 128
    overlap_iterations: int = 1
    regularization: float = 1e-3
    fourier_relax: float = 0.05
    probe_support: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_range("beta", 0, 1)
        if self.block_size < 1:
            raise ValueError(f"{type(self).__name__}.block_size={self.block_size} must be >= 1")
        if self.overlap_iterations < 1:
            raise ValueError(
                f"{type(self).__name__}.overlap_iterations={self.overlap_iterations} must be >= 1"
            )
        self._check_range("regularization", 0, 1)
        self._check_range("fourier_relax", 0, 1, lo_open=False)
        if not 0 <= self.probe_support <= 0.75:
            raise ValueError(
                f"{type(self).__name__}.probe_support={self.probe_support} must lie in [0, 0.75] "
                "(fraction of the frame side; 0 turns it off)"
            )


@dataclass
class DmOptions(RaarOptions):
    """Options of :class:`DifferenceMap`: RAAR's, with ``beta`` 1 (the plain difference map).

    Attributes
    ----------
    beta : float
        The difference map's own relaxation; 1 is Thibault et al.'s form.
    """

    beta: float = 1.0


@dataclass
class LsqmlOptions(SolverOptions):
    """Options of :class:`LSQML`.

    Attributes
    ----------
    noise : {"gaussian", "poisson"}
        Noise model of the likelihood: Gaussian on amplitudes (the modulus
        constraint) or Poisson on counts (a step along the likelihood's
        gradient, its length found per view by Newton's method).
    batch_size : int
        Views per update; LSQ-ML's directions are averaged over a batch.
    regularization : float
        Preconditioner regularisation δ relative to the maximum illumination
        (object) or object power (probe).
    max_step : float
        Largest step length along a direction (steps are solved per view
        and averaged over the batch).
    """

    noise: str = "gaussian"
    batch_size: int = 64
    regularization: float = 0.05
    max_step: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.noise not in ("gaussian", "poisson"):
            raise ValueError(
                f"LsqmlOptions.noise={self.noise!r} must be 'gaussian' or 'poisson'"
            )
        if self.batch_size < 1:
            raise ValueError(f"LsqmlOptions.batch_size={self.batch_size} must be >= 1")
        self._check_range("regularization", 0, 1)
        self._check_range("max_step", 0, 10)


def options_doc(options_type: type) -> dict[str, str]:
    """Field → first line of its description, from an options class's docstrings."""
    out: dict[str, str] = {}
    for cls in reversed(options_type.__mro__):
        doc = cls.__doc__ or ""
        lines = doc.splitlines()
        for i, line in enumerate(lines):
            name = line.strip().split(" : ")[0]
            if " : " in line and i + 1 < len(lines):
                out[name] = lines[i + 1].strip()
    return {f.name: out.get(f.name, "") for f in fields(options_type)}


# --------------------------------------------------------------------------- storage
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


# --------------------------------------------------------------------------- the state
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
            err = self._iteration(measured)
            if self.probe.shape[0] > 1 and self._update_probe:
                self.probe = orthogonalize_modes(self.probe)
            self.iteration += 1
            self.errors.append(err)
            out.append(err)
        return out

    @property
    def _update_probe(self) -> bool:
        s = self.options.probe_update_start
        return s >= 0 and self.iteration >= s

    @property
    def _refine_positions(self) -> bool:
        s = self.options.position_refinement_start
        return s >= 0 and self.iteration >= s

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

    def _position_step(
        self, idx: np.ndarray, probes: Array, patches: Array, chi: Array
    ) -> None:
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


# --------------------------------------------------------------------------- rPIE
class RPIE(Solver):
    """Mini-batch ePIE/rPIE with mixed-state probes and position refinement."""

    name = "rpie"
    Options = RpieOptions

    def _iteration(self, measured: np.ndarray) -> float:
        xp = self.xp
        opt: RpieOptions = self.options  # type: ignore[assignment]
        update_probe = self._update_probe
        refine = self._refine_positions
        den = xp.zeros(self.object.shape, dtype=xp.float32)
        err = xp.zeros(2, dtype=xp.float64)
        for idx in _blocks(self._rng.permutation(measured), opt.batch_size):
            corners, ramps, probes, patches = self._views(idx)
            psi = probes * patches[:, None]
            far = fft2(psi)
            scale, e = self._modulus(far, self.amplitudes.get(idx))
            err += e
            chi = ifft2(far * scale) - psi  # ψ' − ψ

            # Object step: rPIE's preconditioner with the batch's summed
            # illumination, gathered back at each view so overlaps add up right.
            local = self._illumination_at_views(den, corners, probes)
            denom = (1 - opt.alpha) * local + opt.alpha * xp.max(local)
            obj_step = xp.sum(xp.conj(probes) * chi, axis=1) / denom

            if update_probe:
                dprobe = self._probe_direction(patches, chi, ramps)
                pden = xp.sum(patches.real**2 + patches.imag**2, axis=0)
                self.probe += (dprobe / ((1 - opt.beta) * pden + opt.beta * xp.max(pden))).astype(
                    xp.complex64
                )
            if refine:
                self._position_step(idx, probes, patches, chi)
            scatter_add(self.object, corners, obj_step)
        return float(err[0]) / max(float(err[1]), 1e-30)


def _clear(target: Array, corners: np.ndarray, shape: tuple[int, int]) -> None:
    """Zero what :func:`scatter_add` wrote at *corners* (cheaper than zeroing all)."""
    xp = get_xp(target)
    if xp is np:
        h, w = shape
        for cy, cx in corners:
            target[cy : cy + h, cx : cx + w] = 0
    else:
        target[...] = 0


# --------------------------------------------------------------------------- RAAR / DM
class RAAR(Solver):
    """Relaxed averaged alternating reflections on stored exit waves (``beta = 1``: DM)."""

    name = "raar"
    Options = RaarOptions
    stored_waves = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        m = self.probe.shape[0]
        self.waves = FrameStore(
            self.xp, len(self.weights), (m, *self.frame_shape), np.complex64,
            self.amplitudes.on_device,
        )
        self._support = self._probe_support()

    def _frames_added(self, idx: np.ndarray) -> None:
        counts = self.amplitudes.get(idx)
        brightest = float(self.xp.max(self.xp.sum(counts**2, axis=(1, 2))))
        if brightest > self._max_counts:
            self._max_counts = brightest
        # a new (or re-measured) frame starts from the current model's exit wave
        _c, _r, probes, patches = self._views(idx)
        self.waves.put(idx, probes * patches[:, None])

    def _points_added(self, n_new: int) -> None:
        self.waves.grow(n_new)

    def _iteration(self, measured: np.ndarray) -> float:
        xp = self.xp
        opt: RaarOptions = self.options  # type: ignore[assignment]
        blocks = _blocks(measured, opt.block_size)
        for _ in range(opt.overlap_iterations):
            self._object_from_waves(blocks)
            if self._update_probe:
                self._probe_from_waves(blocks)
        err = xp.zeros(2, dtype=xp.float64)
        beta = np.float32(opt.beta)
        for idx in blocks:
            _c, _r, probes, patches = self._views(idx)
            model = probes * patches[:, None]  # P_O ψ
            psi = self.waves.get(idx)
            reflected = 2 * model - psi  # R_O ψ
            far = fft2(reflected)
            amp_meas = self.amplitudes.get(idx)
            projected = ifft2(far * self._relaxed_scale(far, amp_meas))  # P_F R_O ψ
            self.waves.put(idx, beta * (psi + projected - model) + (1 - beta) * model)
            _s, e = self._modulus(fft2(model), amp_meas)
            err += e
        return float(err[0]) / max(float(err[1]), 1e-30)

    def _relaxed_scale(self, far: Array, meas: Array) -> Array:
        """The modulus constraint's factor on *far* (B, M, H, W), with Fourier relaxation."""
        xp = self.xp
        amp = xp.sqrt(xp.sum(far.real**2 + far.imag**2, axis=1))
        dev = xp.where(self.mask, amp - meas, 0)
        relax = self.options.fourier_relax  # type: ignore[attr-defined]
        if relax:
            h, w = self.frame_shape
            bound = 0.25 * relax**2 * self._max_counts / (h * w)
            err = xp.mean(dev**2, axis=(1, 2), keepdims=True)
            keep = xp.sqrt(xp.minimum(bound / xp.maximum(err, 1e-30), 1))
            dev = dev * keep.astype(xp.float32)  # the deviation left: within the bound
        else:
            dev = 0
        target = meas + dev
        scale = xp.where(self.mask, target / xp.maximum(amp, 1e-12), 1).astype(xp.float32)
        return scale[:, None]

    _max_counts: float = 0.0

    def _object_from_waves(self, blocks: list[np.ndarray]) -> None:
        xp = self.xp
        num = xp.zeros(self.object.shape, dtype=xp.complex64)
        den = xp.zeros(self.object.shape, dtype=xp.float32)
        for idx in blocks:
            corners, _r, probes, _p = self._views(idx)
            psi = self.waves.get(idx)
            scatter_add(num, corners, xp.sum(xp.conj(probes) * psi, axis=1))
            scatter_add(den, corners, xp.sum(xp.abs(probes) ** 2, axis=1).astype(xp.float32))
        lit = den > 0
        reg = self.options.regularization * float(xp.max(den))  # type: ignore[attr-defined]
        obj = num / (den + reg)
        # keep the scale on the probe: the illumination-weighted mean |O| is 1
        # (object × a, probe ÷ a give the same model; left free, the two drift)
        c = float(xp.sum(den * xp.abs(obj)) / max(float(xp.sum(den)), 1e-30))
        if c > 0:
            obj /= np.float32(c)
            self.probe *= np.float32(c)
        self.object = xp.where(lit, obj, self.object).astype(xp.complex64)

    def _probe_from_waves(self, blocks: list[np.ndarray]) -> None:
        xp = self.xp
        num = xp.zeros(self.probe.shape, dtype=xp.complex64)
        den = xp.zeros(self.frame_shape, dtype=xp.float32)
        for idx in blocks:
            _c, ramps, _pr, patches = self._views(idx)
            num += self._probe_direction(patches, self.waves.get(idx), ramps)
            o2 = (patches.real**2 + patches.imag**2).astype(xp.float32)
            if ramps is None:
                den += xp.sum(o2, axis=0)
            else:  # |O_j|² seen from the probe's frame: shifted back like the numerator
                den += ifft2(xp.sum(fft2(o2) * xp.conj(ramps), axis=0)).real
        reg = self.options.regularization * float(xp.max(den))  # type: ignore[attr-defined]
        self.probe = (num / (den + reg) * self._support).astype(xp.complex64)

    def _probe_support(self) -> Array:
        """Soft circular mask of radius ``probe_support`` × the frame side (ones when 0)."""
        frac = self.options.probe_support  # type: ignore[attr-defined]
        h, w = self.frame_shape
        if not frac:
            return self.xp.ones((h, w), dtype=self.xp.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        r = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
        edge = np.clip((frac - r) * max(h, w) / 2 + 0.5, 0, 1)  # soft by two pixels
        return self.xp.asarray(edge.astype(np.float32))


class DifferenceMap(RAAR):
    """The difference map (Thibault et al. 2009): RAAR with ``beta = 1``."""

    name = "dm"
    Options = DmOptions


# --------------------------------------------------------------------------- LSQ-ML
class LSQML(Solver):
    """Least-squares maximum likelihood with mini-batches (Gaussian or Poisson noise)."""

    name = "lsqml"
    Options = LsqmlOptions

    def _iteration(self, measured: np.ndarray) -> float:
        xp = self.xp
        opt: LsqmlOptions = self.options  # type: ignore[assignment]
        update_probe = self._update_probe
        refine = self._refine_positions
        err = xp.zeros(2, dtype=xp.float64)
        illum = xp.zeros(self.object.shape, dtype=xp.float32)
        num = xp.zeros(self.object.shape, dtype=xp.complex64)
        for idx in _blocks(self._rng.permutation(measured), opt.batch_size):
            corners, ramps, probes, patches = self._views(idx)
            psi = probes * patches[:, None]
            far = fft2(psi)
            meas = self.amplitudes.get(idx)
            scale, e = self._modulus(far, meas)
            err += e
            if opt.noise == "gaussian":
                chi = ifft2(far * scale) - psi
            else:
                chi = ifft2(far * self._poisson_factor(far, meas))

            # preconditioned object direction over the batch
            local = self._illumination_at_views(illum, corners, probes)
            local = local + opt.regularization * xp.max(local)
            grad = xp.sum(xp.conj(probes) * chi, axis=1)
            scatter_add(num, corners, grad)
            # the direction D = Σ conj(P) χ / (Σ|P|² + δ) on the object, seen at each view
            d_obj = extract_patches(num, corners, self.frame_shape) / local
            _clear(num, corners, self.frame_shape)
            a = probes * d_obj[:, None]  # exit-wave change along the object direction

            if update_probe:
                o2 = xp.sum(patches.real**2 + patches.imag**2, axis=0)
                d_probe = self._probe_direction(patches, chi, ramps) / (
                    o2 + opt.regularization * xp.max(o2)
                )
                shifted = (
                    d_probe[None] if ramps is None else ifft2(fft2(d_probe)[None] * ramps[:, None])
                )
                b = shifted * patches[:, None]
                alpha_o, alpha_p = _two_steps(a, b, chi, opt.max_step)
                self.probe += (alpha_p * d_probe).astype(xp.complex64)
            else:
                alpha_o = _one_step(a, chi, opt.max_step)
            if refine:
                self._position_step(idx, probes, patches, chi)
            # each view adds its share of D (the shares sum to D where views overlap)
            scatter_add(self.object, corners, alpha_o[:, None, None] * (grad / local))
        return float(err[0]) / max(float(err[1]), 1e-30)

    def _poisson_factor(self, far: Array, meas: Array) -> Array:
        """``α_j (I/Ĩ − 1)``: the Poisson likelihood's descent direction in the detector.

        ``α_j`` minimises the likelihood of view *j* along it (three Newton
        steps on ``Σ Ĩ(1+αr)² − I log Ĩ(1+αr)²``, kept in [0, 1]).
        """
        xp = self.xp
        model = xp.sum(far.real**2 + far.imag**2, axis=1)
        counts = meas**2
        floor = 1e-3 * xp.mean(model, axis=(1, 2), keepdims=True)
        r = xp.where(self.mask, counts / (model + floor) - 1, 0).astype(xp.float32)
        alpha = xp.zeros((len(model), 1, 1), dtype=xp.float32)
        for _ in range(3):
            u = 1 + alpha * r
            u = xp.maximum(u, 1e-3)
            g = xp.sum(2 * model * r * u - 2 * counts * r / u, axis=(1, 2), keepdims=True)
            hss = xp.sum(2 * model * r**2 + 2 * counts * r**2 / u**2, axis=(1, 2), keepdims=True)
            alpha = xp.clip(alpha - g / xp.maximum(hss, 1e-30), 0, 1)
        return (alpha * r)[:, None]


def _one_step(a: Array, chi: Array, max_step: float) -> Array:
    """Per-view step (B,) along *a* that best explains *chi* (least squares), averaged."""
    xp = get_xp(a)
    axes = tuple(range(1, a.ndim))
    aa = xp.sum(xp.abs(a) ** 2, axis=axes)
    ab = xp.sum((xp.conj(a) * chi).real, axis=axes)
    step = xp.clip(ab / xp.maximum(aa, 1e-30), 0, max_step)
    return xp.full(len(step), xp.mean(step), dtype=xp.float32)


def _two_steps(a: Array, b: Array, chi: Array, max_step: float) -> tuple[Array, Array]:
    """Per-view steps along object (*a*) and probe (*b*) changes solving the 2 × 2 least squares.

    Returns the object steps (B,) (their batch mean for every view, as
    LSQ-ML's mini-batch form) and the probe's scalar step (their mean).
    """
    xp = get_xp(a)
    axes = tuple(range(1, a.ndim))
    aa = xp.sum(xp.abs(a) ** 2, axis=axes)
    bb = xp.sum(xp.abs(b) ** 2, axis=axes)
    ab = xp.sum((xp.conj(a) * b).real, axis=axes)
    ac = xp.sum((xp.conj(a) * chi).real, axis=axes)
    bc = xp.sum((xp.conj(b) * chi).real, axis=axes)
    det = aa * bb - ab**2
    ok = det > 1e-6 * aa * bb
    so = xp.where(ok, (bb * ac - ab * bc) / xp.where(ok, det, 1), ac / xp.maximum(aa, 1e-30))
    sp = xp.where(ok, (aa * bc - ab * ac) / xp.where(ok, det, 1), 0)
    so = xp.clip(so, 0, max_step)
    sp = xp.clip(sp, 0, max_step)
    return xp.full(len(so), xp.mean(so), dtype=xp.float32), xp.mean(sp).astype(xp.float32)


# --------------------------------------------------------------------------- registry
SOLVERS: dict[str, type[Solver]] = {
    cls.name: cls for cls in (RPIE, DifferenceMap, RAAR, LSQML)
}
#: Accepted aliases of algorithm names
ALIASES = {"epie": "rpie", "ml": "lsqml", "lsq-ml": "lsqml", "difference_map": "dm"}


def solver_class(algorithm: str) -> type[Solver]:
    """The solver class for an algorithm name (``rpie``/``epie``, ``dm``, ``raar``, ``lsqml``)."""
    key = ALIASES.get(algorithm.lower(), algorithm.lower())
    if key not in SOLVERS:
        raise ValueError(
            f"algorithm={algorithm!r} is not known: use one of {sorted(SOLVERS)} "
            f"(aliases {sorted(ALIASES)})"
        )
    return SOLVERS[key]


def make_options(algorithm: str, **values: Any) -> SolverOptions:
    """The options of *algorithm* from keyword values, refusing unknown names.

    ``algorithm="epie"`` sets ``alpha = beta = 1`` unless given.
    """
    cls = solver_class(algorithm).Options
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{cls.__name__} has no option(s) {unknown}; its options are {sorted(known)}"
        )
    if algorithm.lower() == "epie":
        values = {"alpha": 1.0, "beta": 1.0, **values}
    return cls(**values)
