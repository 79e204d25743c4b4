"""The ptychographic forward model, its adjoints, and a streaming ePIE solver.

Names used throughout (numpy/CuPy alike, single precision):

- ``N``: number of scan points; ``H, W``: frame (and probe) shape;
- ``object`` : (Y, X) complex64, the sample's transmission on the object grid;
- ``probe`` : (H, W) complex64, the illumination;
- ``positions`` : (N, 2) float, (row, column) in object pixels of each view's
  top-left corner, sub-pixel allowed;
- ``intensities`` : (N, H, W) float32, measured photon counts, DC at the frame
  centre (``fftshift`` ordering, as detectors see it).

The forward operator of one view is ``ψ_j = S_j(P) · O[c_j]`` followed by the
orthonormal far-field propagator ``F``, where ``c_j`` is the integer part of
the position and ``S_j`` shifts the probe by the fractional part with a
Fourier phase ramp. :func:`forward` / :func:`adjoint_object` /
:func:`adjoint_probe` form adjoint pairs; the tests check ``<A x, y> = <x, A* y>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._array import Array, fft2, fftshift2, get_xp, ifft2, ifftshift2


# --------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class ObjectGrid:
    """Where the object array sits in the sample plane.

    Parameters
    ----------
    shape : (int, int)
        Object array shape (Y, X).
    origin_m : (float, float)
        (x, y) in m of the sample-plane point at the centre of the probe
        when the view's top-left corner is at object pixel (0, 0).
    pixel_size_m : float
        Object pixel size in m.
    """

    shape: tuple[int, int]
    origin_m: tuple[float, float]
    pixel_size_m: float

    def to_pixels(self, positions_m: Array) -> Array:
        """Stage positions (N, 2) as (x, y) in m → view corners (N, 2) as (row, column) px."""
        xp = get_xp(positions_m)
        p = xp.asarray(positions_m, dtype=xp.float64)
        col = (p[:, 0] - self.origin_m[0]) / self.pixel_size_m
        row = (p[:, 1] - self.origin_m[1]) / self.pixel_size_m
        return xp.stack([row, col], axis=1)


def object_grid(
    positions_m: Array, pixel_size_m: float, frame_px: int, margin_px: int = 8
) -> ObjectGrid:
    """The object grid that holds every view of a scan, with *margin_px* to spare.

    The origin is snapped to a multiple of the pixel size, so two grids built
    for overlapping scans with the same pixel size differ by whole pixels.

    Parameters
    ----------
    positions_m : (N, 2) array
        Stage positions (x, y) in m.
    pixel_size_m : float
        Object pixel size in m.
    frame_px : int
        Probe/frame side H = W in pixels.
    margin_px : int
        Spare pixels on every side (room for position errors and drift).
    """
    p = np.asarray(positions_m, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        raise ValueError(f"positions must be (N, 2) (x, y) in m with N >= 1, got shape {p.shape}")
    lo = np.floor(p.min(axis=0) / pixel_size_m) - margin_px
    hi = np.ceil(p.max(axis=0) / pixel_size_m) + margin_px
    nx, ny = (hi - lo).astype(int) + frame_px + 1
    return ObjectGrid(
        shape=(int(ny), int(nx)),
        origin_m=(float(lo[0] * pixel_size_m), float(lo[1] * pixel_size_m)),
        pixel_size_m=float(pixel_size_m),
    )


# ------------------------------------------------------------------ operators
def split_positions(positions: Array) -> tuple[np.ndarray, Array]:
    """Integer corners (host ints) and fractional parts (same module) of view positions."""
    xp = get_xp(positions)
    pos = xp.asarray(positions, dtype=xp.float64)
    corner = xp.floor(pos)
    frac = pos - corner
    corner_host = np.asarray(corner.get() if hasattr(corner, "get") else corner, dtype=np.int64)
    return corner_host, frac


def shift_ramps(frac: Array, shape: tuple[int, int]) -> Array:
    """Fourier phase ramps ``(N, H, W)`` complex64 that shift by *frac* (N, 2) pixels.

    Separable: the outer product of a row ramp and a column ramp.
    """
    xp = get_xp(frac)
    h, w = shape
    ky = xp.fft.fftfreq(h)
    kx = xp.fft.fftfreq(w)
    ry = xp.exp((-2j * np.pi) * frac[:, 0:1] * ky[None, :]).astype(xp.complex64)
    rx = xp.exp((-2j * np.pi) * frac[:, 1:2] * kx[None, :]).astype(xp.complex64)
    return ry[:, :, None] * rx[:, None, :]


def shifted_probes(probe: Array, ramps: Array) -> Array:
    """``S_j(P)`` for every view: (N, H, W) complex64."""
    return ifft2(fft2(probe)[None] * ramps)


def extract_patches(obj: Array, corners: np.ndarray, shape: tuple[int, int]) -> Array:
    """Gather views ``O[c_j]`` as (N, H, W) (a copy)."""
    xp = get_xp(obj)
    h, w = shape
    windows = xp.lib.stride_tricks.sliding_window_view(obj, (h, w))
    iy = xp.asarray(corners[:, 0])
    ix = xp.asarray(corners[:, 1])
    return windows[iy, ix]


def scatter_add(target: Array, corners: np.ndarray, patches: Array) -> None:
    """Add (N, H, W) *patches* into *target* at *corners* (in place; overlaps add up)."""
    h, w = patches.shape[-2:]
    for j, (cy, cx) in enumerate(corners):
        target[cy : cy + h, cx : cx + w] += patches[j]


def exit_waves(obj: Array, probe: Array, positions: Array) -> Array:
    """Exit waves ``ψ_j = S_j(P) · O[c_j]`` (N, H, W) complex64."""
    corners, frac = split_positions(positions)
    probes = shifted_probes(probe, shift_ramps(frac, probe.shape))
    return probes * extract_patches(obj, corners, probe.shape)


def forward(obj: Array, probe: Array, positions: Array) -> Array:
    """Far-field waves ``F ψ_j`` (N, H, W) complex64, DC at the corner (FFT order)."""
    return fft2(exit_waves(obj, probe, positions))


def adjoint_object(waves: Array, probe: Array, positions: Array, object_shape: tuple) -> Array:
    """Adjoint of :func:`forward` with respect to the object: ``Σ_j c_j*(conj(S_j P) · F* Ψ_j)``."""
    xp = get_xp(waves)
    corners, frac = split_positions(positions)
    probes = shifted_probes(probe, shift_ramps(frac, probe.shape))
    out = xp.zeros(object_shape, dtype=xp.complex64)
    scatter_add(out, corners, xp.conj(probes) * ifft2(waves))
    return out


def adjoint_probe(waves: Array, obj: Array, positions: Array) -> Array:
    """Adjoint of :func:`forward` with respect to the probe: ``Σ_j S_j*(conj(O[c_j]) · F* Ψ_j)``."""
    xp = get_xp(waves)
    h, w = waves.shape[-2:]
    corners, frac = split_positions(positions)
    g = xp.conj(extract_patches(obj, corners, (h, w))) * ifft2(waves)
    return ifft2(xp.sum(fft2(g) * xp.conj(shift_ramps(frac, (h, w))), axis=0))


def far_field_intensity(obj: Array, probe: Array, positions: Array, upsample: int = 1) -> Array:
    """Diffraction intensities ``|F ψ_j|²`` (N, H·u, W·u) float32, DC at the centre.

    With ``upsample = u > 1`` the exit wave is zero-padded to ``u`` times its
    size before propagation: the pattern a detector with ``u`` times finer
    pixels records (how the simulator makes full-size detector frames whose
    Fourier downsampling gives back the ``H × W`` frames).
    """
    xp = get_xp(obj)
    psi = exit_waves(obj, probe, positions)
    if upsample > 1:
        n, h, w = psi.shape
        big = xp.zeros((n, h * upsample, w * upsample), dtype=psi.dtype)
        big[:, :h, :w] = psi
        psi = big
    far = fftshift2(fft2(psi))
    return (far.real**2 + far.imag**2).astype(xp.float32)


# ------------------------------------------------------------------ the solver
@dataclass
class EpieOptions:
    """Options of the mini-batch ePIE/rPIE solver.

    Attributes
    ----------
    batch_size : int
        Views updated together. 1 is classic sequential ePIE; larger batches
        vectorise (and suit the GPU) at a small cost in convergence per epoch.
    alpha : float
        rPIE regularisation of the object step, in (0, 1]: the denominator is
        ``(1 − α)·Σ|P|² + α·max Σ|P|²``. 1 gives ePIE's step.
    beta : float
        Same for the probe step.
    probe_update_start : int
        First epoch in which the probe is refined (0 = from the start).
    seed : int
        Seed of the random view order.
    """

    batch_size: int = 16
    alpha: float = 0.1
    beta: float = 0.5
    probe_update_start: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"EpieOptions.batch_size={self.batch_size} must be >= 1")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ValueError(f"EpieOptions.{name}={v} must lie in (0, 1]")


class StreamingEpie:
    """ePIE/rPIE with probe refinement over a scan whose frames arrive over time.

    Allocated for the whole scan up front; frames not yet measured (or flagged
    bad) have zero weight and take no part. :meth:`add_frames` may be called at
    any time, in any order, between calls of :meth:`iterate`.

    Parameters
    ----------
    positions : (N, 2) array
        View corners (row, column) in object pixels.
    object_shape : (int, int)
        Object array shape.
    probe : (H, W) complex array
        Initial probe; its array module is the one used throughout.
    options : EpieOptions, optional
    detector_mask : (H, W) bool array, optional
        False where detector pixels are invalid: the model is kept there.
    """

    def __init__(
        self,
        positions: Array,
        object_shape: tuple[int, int],
        probe: Array,
        options: EpieOptions | None = None,
        detector_mask: Array | None = None,
    ) -> None:
        xp = get_xp(probe)
        self.xp = xp
        self.options = options or EpieOptions()
        self.probe = xp.asarray(probe, dtype=xp.complex64).copy()
        h, w = self.probe.shape
        self.frame_shape = (h, w)
        self.object = xp.ones(object_shape, dtype=xp.complex64)
        n = len(positions)
        self.positions = xp.asarray(positions, dtype=xp.float64).copy()
        self._check_positions(self.positions)
        # amplitudes in FFT order (DC at the corner), as the model produces them
        self.amplitudes = xp.zeros((n, h, w), dtype=xp.float32)
        self.weights = xp.zeros(n, dtype=xp.float32)
        self.mask = (
            xp.ones((h, w), dtype=bool)
            if detector_mask is None
            else ifftshift2(xp.asarray(detector_mask, dtype=bool))
        )
        self._scratch = xp.zeros(object_shape, dtype=xp.float32)
        self.epoch = 0
        self.errors: list[float] = []
        self._rng = np.random.default_rng(self.options.seed)

    # -- data in ------------------------------------------------------------
    def _check_positions(self, positions: Array) -> None:
        h, w = self.frame_shape
        p = positions
        ylim, xlim = self.object.shape[0] - h, self.object.shape[1] - w
        bad = (p[:, 0] < 0) | (p[:, 1] < 0) | (p[:, 0] >= ylim) | (p[:, 1] >= xlim)
        if bool(bad.any()):
            raise ValueError(
                f"{int(bad.sum())} view(s) fall outside the object array of shape "
                f"{self.object.shape}: allocate it with object_grid() from all positions"
            )

    def add_frames(
        self, indices: Array, intensities: Array, positions: Array | None = None
    ) -> None:
        """Give measured frames to the solver (weight 1 from now on).

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
        idx = np.asarray(indices, dtype=np.int64)
        data = xp.asarray(intensities, dtype=xp.float32)
        if data.shape[1:] != self.frame_shape:
            raise ValueError(f"frames of shape {data.shape[1:]} given, expected {self.frame_shape}")
        self.amplitudes[idx] = ifftshift2(xp.sqrt(xp.maximum(data, 0)))
        if positions is not None:
            pos = xp.asarray(positions, dtype=xp.float64).reshape(len(idx), 2)
            self._check_positions(pos)
            self.positions[idx] = pos
        self.weights[idx] = 1

    def flag(self, indices: Array) -> None:
        """Give frames zero weight (bad or to be re-measured)."""
        self.weights[np.asarray(indices, dtype=np.int64)] = 0

    @property
    def n_measured(self) -> int:
        """Number of frames with non-zero weight."""
        return int((self.weights > 0).sum())

    # -- iterations -----------------------------------------------------------
    def iterate(
        self, epochs: int = 1, should_stop: Callable[[], bool] | None = None
    ) -> list[float]:
        """Run *epochs* passes over the measured frames; return the data error of each.

        The data error is ``Σ (|Ψ| − √I)² / Σ I`` over valid pixels of the
        measured frames, accumulated during the pass.
        """
        out = []
        for _ in range(epochs):
            if should_stop is not None and should_stop():
                break
            measured = np.flatnonzero(np.asarray(_host(self.weights)) > 0)
            if len(measured) == 0:
                break
            out.append(self._epoch(measured))
        return out

    def _epoch(self, measured: np.ndarray) -> float:
        xp = self.xp
        opt = self.options
        order = self._rng.permutation(measured)
        update_probe = self.epoch >= opt.probe_update_start
        shape = self.frame_shape
        den = self._scratch
        err_num = xp.zeros((), dtype=xp.float64)
        err_den = xp.zeros((), dtype=xp.float64)
        for start in range(0, len(order), opt.batch_size):
            batch = np.sort(order[start : start + opt.batch_size])
            corners, frac = split_positions(self.positions[batch])
            ramps = shift_ramps(frac, shape)
            probes = ifft2(fft2(self.probe)[None] * ramps)
            patches = extract_patches(self.object, corners, shape)
            psi = probes * patches
            far = fft2(psi)
            amp = xp.abs(far)
            meas = self.amplitudes[batch]
            err_num += xp.sum(xp.where(self.mask, (amp - meas) ** 2, 0))
            err_den += xp.sum(xp.where(self.mask, meas**2, 0))
            scale = xp.where(self.mask, meas / xp.maximum(amp, 1e-12), 1).astype(xp.float32)
            delta = ifft2(far * scale) - psi  # ψ' − ψ

            # Object step: rPIE's preconditioner with the batch's summed
            # illumination, gathered back at each view so overlaps add up right.
            p2 = (probes.real**2 + probes.imag**2).astype(xp.float32)
            scatter_add(den, corners, p2)
            local = extract_patches(den, corners, shape)
            denom = (1 - opt.alpha) * local + opt.alpha * local.max()
            obj_step = xp.conj(probes) * delta / denom
            for cy, cx in corners:  # clear only what was written
                den[cy : cy + shape[0], cx : cx + shape[1]] = 0

            if update_probe:
                g = xp.conj(patches) * delta
                dprobe = ifft2(xp.sum(fft2(g) * xp.conj(ramps), axis=0))
                pden = xp.sum(patches.real**2 + patches.imag**2, axis=0)
                self.probe += (dprobe / ((1 - opt.beta) * pden + opt.beta * pden.max())).astype(
                    xp.complex64
                )
            scatter_add(self.object, corners, obj_step)
        self.epoch += 1
        err = float(err_num) / max(float(err_den), 1e-30)
        self.errors.append(err)
        return err

    def illumination(self) -> Array:
        """Total illumination ``Σ_j w_j |S_j P|²`` on the object grid (Y, X) float32."""
        xp = self.xp
        measured = np.flatnonzero(np.asarray(_host(self.weights)) > 0)
        out = xp.zeros(self.object.shape, dtype=xp.float32)
        for start in range(0, len(measured), 64):
            batch = measured[start : start + 64]
            corners, frac = split_positions(self.positions[batch])
            probes = shifted_probes(self.probe, shift_ramps(frac, self.frame_shape))
            scatter_add(out, corners, (probes.real**2 + probes.imag**2).astype(xp.float32))
        return out


def _host(x: Array) -> np.ndarray:
    return x.get() if hasattr(x, "get") else x


def probe_from_counts(probe: Array, mean_counts: float) -> Array:
    """Scale *probe* so that ``Σ|P|²`` equals the mean photon count of a frame.

    With the orthonormal propagator, that is the scale the data imply.
    """
    xp = get_xp(probe)
    power = float(xp.sum(xp.abs(probe) ** 2))
    return probe * math.sqrt(max(mean_counts, 0.0) / max(power, 1e-30))
