"""The ptychographic forward model and its adjoints (the solvers are in :mod:`.solvers`).

Names used throughout (numpy/CuPy alike, single precision):

- ``N``: number of scan points; ``H, W``: frame (and probe) shape;
- ``object`` : (Y, X) complex64, the sample's transmission on the object grid;
- ``probe`` : (H, W) complex64, the illumination, or (M, H, W) incoherent modes;
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
from dataclasses import dataclass
from typing import Any

import numpy as np

from bluesky_ptycho.core.arrays import Array, fft2, fftshift2, get_xp, ifft2


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


#: Largest object grid made without being asked: 2**28 complex64 pixels (2 GiB; a 16384² grid)
MAX_OBJECT_PIXELS = 2**28


def object_grid(
    positions_m: Array,
    pixel_size_m: float,
    frame_px: int,
    margin_px: int = 8,
    max_pixels: int = MAX_OBJECT_PIXELS,
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
    max_pixels : int
        The grid the positions span is refused (ValueError, before anything is
        allocated) when it would hold more pixels than this.
    """
    p = np.asarray(positions_m, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        raise ValueError(f"positions must be (N, 2) (x, y) in m with N >= 1, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"positions hold {int((~np.isfinite(p)).sum())} NaN or infinite values")
    if not (np.isfinite(pixel_size_m) and pixel_size_m > 0):
        raise ValueError(f"object pixel size {pixel_size_m!r} m must be a positive number")
    lo = np.floor(p.min(axis=0) / pixel_size_m) - margin_px
    hi = np.ceil(p.max(axis=0) / pixel_size_m) + margin_px
    span = hi - lo + frame_px + 1  # float: no overflow before the check
    if span[0] * span[1] > max_pixels:
        extent = (p.max(axis=0) - p.min(axis=0)) * 1e6
        raise ValueError(
            f"the positions span {extent[0]:.4g} × {extent[1]:.4g} µm: an object of "
            f"{span[1]:.0f} × {span[0]:.0f} pixels of {pixel_size_m * 1e9:.3g} nm "
            f"({span[0] * span[1] * 8 / 2**30:.3g} GiB), more than the {max_pixels} pixels allowed; "
            "check the positions' units (metres) and the pixel size"
        )
    nx, ny = span.astype(int)
    return ObjectGrid(
        shape=(int(ny), int(nx)),
        origin_m=(float(lo[0] * pixel_size_m), float(lo[1] * pixel_size_m)),
        pixel_size_m=float(pixel_size_m),
    )


# ------------------------------------------------------------------ operators
def split_positions(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer corners (int64) and fractional parts (float64) of view positions (host arrays)."""
    pos = np.asarray(_host(positions), dtype=np.float64)
    corner = np.floor(pos)
    return corner.astype(np.int64), pos - corner


def shift_ramps(frac: Array, shape: tuple[int, int], xp: Any = None) -> Array:
    """Fourier phase ramps ``(N, H, W)`` complex64 that shift by *frac* (N, 2) pixels.

    Separable: the outer product of a row ramp and a column ramp. *xp* is the
    module to build them in (default: that of *frac*).
    """
    xp = xp or get_xp(frac)
    frac = xp.asarray(frac, dtype=xp.float64)
    h, w = shape
    ky = xp.fft.fftfreq(h)
    kx = xp.fft.fftfreq(w)
    ry = xp.exp((-2j * np.pi) * frac[:, 0:1] * ky[None, :]).astype(xp.complex64)
    rx = xp.exp((-2j * np.pi) * frac[:, 1:2] * kx[None, :]).astype(xp.complex64)
    return ry[:, :, None] * rx[:, None, :]


def as_modes(probe: Array) -> Array:
    """A probe as (M, H, W) incoherent modes: a single (H, W) probe is one mode."""
    return probe[None] if probe.ndim == 2 else probe


def shifted_probes(probe: Array, ramps: Array) -> Array:
    """``S_j(P_m)`` for every view and mode: (N, M, H, W) complex64 (probe (H, W) or (M, H, W))."""
    return ifft2(fft2(as_modes(probe))[None] * ramps[:, None])


def _flat_index(xp: Any, corners: np.ndarray, shape: tuple[int, int], width: int) -> Array:
    h, w = shape
    offs = (np.arange(h)[:, None] * width + np.arange(w)[None, :]).astype(np.int64)
    start = corners[:, 0] * width + corners[:, 1]
    return xp.asarray(start[:, None, None] + offs[None])


def extract_patches(obj: Array, corners: np.ndarray, shape: tuple[int, int]) -> Array:
    """Gather views ``O[c_j]`` as (N, H, W) (a copy); *corners* are host ints."""
    xp = get_xp(obj)
    if xp is np:
        windows = np.lib.stride_tricks.sliding_window_view(obj, shape)
        return windows[corners[:, 0], corners[:, 1]]
    return obj.ravel()[_flat_index(xp, corners, shape, obj.shape[1])]


def scatter_add(target: Array, corners: np.ndarray, patches: Array) -> None:
    """Add (N, H, W) *patches* into *target* at *corners* (in place; overlaps add up)."""
    xp = get_xp(target)
    h, w = patches.shape[-2:]
    if xp is np:
        for j, (cy, cx) in enumerate(corners):
            target[cy : cy + h, cx : cx + w] += patches[j]
        return
    import cupyx

    idx = _flat_index(xp, corners, (h, w), target.shape[1])
    if xp.iscomplexobj(target):  # scatter the real and imaginary parts as float views
        flat = target.ravel().view(xp.float32 if target.dtype == xp.complex64 else xp.float64)
        vals = xp.ascontiguousarray(patches.astype(target.dtype)).view(flat.dtype)
        cupyx.scatter_add(flat, xp.stack([2 * idx, 2 * idx + 1], -1).reshape(vals.shape), vals)
    else:
        cupyx.scatter_add(target.ravel(), idx, patches.astype(target.dtype))


def exit_waves(obj: Array, probe: Array, positions: Array) -> Array:
    """Exit waves ``ψ_jm = S_j(P_m) · O[c_j]``: (N, H, W) for an (H, W) probe, (N, M, H, W) for modes."""
    corners, frac = split_positions(positions)
    h, w = probe.shape[-2:]
    probes = shifted_probes(probe, shift_ramps(frac, (h, w), get_xp(obj)))
    psi = probes * extract_patches(obj, corners, (h, w))[:, None]
    return psi[:, 0] if probe.ndim == 2 else psi


def forward(obj: Array, probe: Array, positions: Array) -> Array:
    """Far-field waves ``F ψ`` (same shape as :func:`exit_waves`), DC at the corner (FFT order)."""
    return fft2(exit_waves(obj, probe, positions))


def adjoint_object(waves: Array, probe: Array, positions: Array, object_shape: tuple) -> Array:
    """Adjoint of :func:`forward` with respect to the object: ``Σ_jm c_j*(conj(S_j P_m) · F* Ψ_jm)``."""
    xp = get_xp(waves)
    h, w = probe.shape[-2:]
    corners, frac = split_positions(positions)
    probes = shifted_probes(probe, shift_ramps(frac, (h, w), xp))
    waves = waves[:, None] if probe.ndim == 2 else waves
    out = xp.zeros(object_shape, dtype=xp.complex64)
    scatter_add(out, corners, xp.sum(xp.conj(probes) * ifft2(waves), axis=1))
    return out


def adjoint_probe(waves: Array, obj: Array, positions: Array) -> Array:
    """Adjoint of :func:`forward` with respect to the probe: ``Σ_j S_j*(conj(O[c_j]) · F* Ψ_j·)``.

    *waves* (N, H, W) gives an (H, W) probe; (N, M, H, W) gives (M, H, W) modes.
    """
    xp = get_xp(waves)
    h, w = waves.shape[-2:]
    corners, frac = split_positions(positions)
    g = xp.conj(extract_patches(obj, corners, (h, w)))
    g = g if waves.ndim == 3 else g[:, None]
    ramps = xp.conj(shift_ramps(frac, (h, w), xp))
    ramps = ramps if waves.ndim == 3 else ramps[:, None]
    return ifft2(xp.sum(fft2(g * ifft2(waves)) * ramps, axis=0))


def far_field_intensity(obj: Array, probe: Array, positions: Array, upsample: int = 1) -> Array:
    """Diffraction intensities ``Σ_m |F ψ_jm|²`` (N, H·u, W·u) float32, DC at the centre.

    *probe* is (H, W), or (M, H, W) incoherent modes whose intensities add.
    With ``upsample = u > 1`` the exit wave is zero-padded to ``u`` times its
    size before propagation: the pattern a detector with ``u`` times finer
    pixels records (how the simulator makes full-size detector frames whose
    Fourier downsampling gives back the ``H × W`` frames).
    """
    xp = get_xp(obj)
    psi = exit_waves(obj, as_modes(probe), positions)
    if upsample > 1:
        n, m, h, w = psi.shape
        big = xp.zeros((n, m, h * upsample, w * upsample), dtype=psi.dtype)
        big[..., :h, :w] = psi
        psi = big
    far = fftshift2(fft2(psi))
    return xp.sum(far.real**2 + far.imag**2, axis=1).astype(xp.float32)


def _host(x: Array) -> np.ndarray:
    return x.get() if hasattr(x, "get") else np.asarray(x)


def probe_from_counts(probe: Array, mean_counts: float) -> Array:
    """Scale *probe* (all modes together) so that ``Σ|P|²`` equals the mean photon count of a frame.

    With the orthonormal propagator, that is the scale the data imply.
    """
    xp = get_xp(probe)
    power = float(xp.sum(xp.abs(probe) ** 2))
    return probe * math.sqrt(max(mean_counts, 0.0) / max(power, 1e-30))
