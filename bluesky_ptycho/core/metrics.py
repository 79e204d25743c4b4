"""Quality metrics of a reconstruction: object error against a truth, FRC (the solvers
report the data error of each iteration themselves).

Ptychography determines the object only up to a global complex factor, a
linear phase ramp (a shift of the far field against the probe) and a
sub-pixel translation (the probe and object may move together). The object
error removes all three before comparing (:func:`align_object`); the
Fourier ring correlation (:func:`frc`) compares two independent
reconstructions — of two halves of the data — the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bluesky_ptycho.core.arrays import Array, fft2, get_xp, ifft2, to_numpy


def object_error(
    estimate: Array,
    truth: Array,
    region: Array | None = None,
    remove_scale: bool = True,
    align: bool = True,
) -> float:
    """Relative error of an object against the truth, ambiguities removed.

    ``‖c·Ã − truth‖ / ‖truth‖`` over *region*, where ``Ã`` is the estimate
    shifted by the sub-pixel translation and multiplied by the phase ramp
    that best match the truth (``align=True``, see :func:`align_object`),
    and ``c`` the complex factor that minimises the norm: its phase removes
    the global phase, its modulus the global amplitude scale, which
    ptychography does not determine (object × a, probe ÷ a give the same
    data). With ``remove_scale=False`` only the phase is removed.

    Parameters
    ----------
    estimate, truth : (Y, X) complex arrays, same grid
    region : (Y, X) bool array, optional
        Pixels to compare (the well-illuminated part of the scan).
    """
    xp = get_xp(estimate)
    truth = xp.asarray(truth)
    if align:
        estimate = align_object(estimate, truth, region).aligned
    e = estimate if region is None else estimate[region]
    t = truth if region is None else truth[region]
    inner = xp.vdot(e, t)
    c = inner / xp.vdot(e, e) if remove_scale else inner / abs(inner)
    return float(xp.linalg.norm(c * e - t) / xp.linalg.norm(t))


@dataclass
class Alignment:
    """What :func:`align_object` found and applied.

    Attributes
    ----------
    aligned : (Y, X) complex array
        The estimate shifted and with the phase ramp removed.
    shift_px : (float, float)
        (row, column) shift applied to the estimate.
    ramp_rad_per_px : (float, float)
        Phase ramp (row, column) multiplied onto it.
    """

    aligned: Array
    shift_px: tuple[float, float]
    ramp_rad_per_px: tuple[float, float]


def align_object(estimate: Array, reference: Array, region: Array | None = None) -> Alignment:
    """Shift *estimate* (sub-pixel) and remove the phase ramp that best match *reference*.

    The shift is the peak of the cross-correlation of the two (weighted by
    *region*), refined to sub-pixel by a parabola through the peak and its
    neighbours and applied as a Fourier phase ramp; the linear phase ramp is
    the mean phase gradient of ``reference · conj(shifted)`` over *region*.
    """
    xp = get_xp(estimate)
    ny, nx = estimate.shape
    w = xp.ones((ny, nx), xp.float32) if region is None else xp.asarray(region, xp.float32)
    reference = xp.asarray(reference)
    ky = xp.fft.fftfreq(ny)[:, None]
    kx = xp.fft.fftfreq(nx)[None, :]
    yy = xp.arange(ny, dtype=xp.float32)[:, None]
    xx = xp.arange(nx, dtype=xp.float32)[None, :]
    fr = fft2(_centred(reference, w))
    shift = np.zeros(2)
    gy = gx = 0.0
    shifted = estimate
    for _ in range(2):  # the ramp blurs the correlation peak: estimate both twice
        deramped = estimate * xp.exp(1j * (gy * yy + gx * xx)).astype(xp.complex64)
        shift = _subpixel_shift(fr, fft2(_centred(deramped, w)))
        ramp = xp.exp(-2j * np.pi * (ky * shift[0] + kx * shift[1])).astype(xp.complex64)
        shifted = ifft2(fft2(estimate) * ramp).astype(xp.complex64)
        # phase ramp: mean phase gradient of reference·conj(shifted) where both are valid
        prod = reference * xp.conj(shifted)
        wy = w[1:, :] * w[:-1, :]
        wx = w[:, 1:] * w[:, :-1]
        gy = float(xp.angle(xp.sum(wy * prod[1:, :] * xp.conj(prod[:-1, :]))))
        gx = float(xp.angle(xp.sum(wx * prod[:, 1:] * xp.conj(prod[:, :-1]))))
    aligned = shifted * xp.exp(1j * (gy * yy + gx * xx)).astype(xp.complex64)
    return Alignment(aligned, (float(shift[0]), float(shift[1])), (gy, gx))


def _centred(a: Array, w: Array) -> Array:
    xp = get_xp(a)
    a = a * w
    return a - w * (xp.sum(a) / max(float(xp.sum(w)), 1.0))


def _subpixel_shift(fr: Array, fe: Array, upsample: int = 20) -> np.ndarray:
    """Shift s with ``r(x) ≈ e(x − s)`` from spectra *fr*, *fe*: peak of the
    cross-correlation, refined on a 1/*upsample* px grid by a matrix DFT
    around it (Guizar-Sicairos, Thurman & Fienup 2008)."""
    xp = get_xp(fr)
    ny, nx = fr.shape
    cross = fr * xp.conj(fe)
    xc = xp.abs(ifft2(cross))
    peak = np.array(np.unravel_index(int(xp.argmax(xc)), xc.shape), dtype=np.float64)
    peak = np.where(peak > np.array([ny, nx]) / 2, peak - np.array([ny, nx]), peak)
    offs = np.arange(-1.5, 1.5 + 1e-9, 1.0 / upsample)
    ky = np.fft.fftfreq(ny)
    kx = np.fft.fftfreq(nx)
    ey = xp.asarray(np.exp(2j * np.pi * np.outer(peak[0] + offs, ky)).astype(np.complex64))
    ex = xp.asarray(np.exp(2j * np.pi * np.outer(kx, peak[1] + offs)).astype(np.complex64))
    fine = xp.abs(ey @ cross @ ex)
    i, j = np.unravel_index(int(xp.argmax(fine)), fine.shape)
    return np.array([peak[0] + offs[i], peak[1] + offs[j]])


def illuminated_region(illumination: Array, fraction: float = 0.1) -> Array:
    """Pixels where the summed illumination exceeds *fraction* of its maximum."""
    return illumination > fraction * illumination.max()


@dataclass
class FRC:
    """A Fourier ring correlation curve.

    Attributes
    ----------
    frequency : (K,) float64
        Ring centres in cycles per pixel (0 … 0.5).
    correlation : (K,) float64
        The FRC in each ring.
    half_bit : (K,) float64
        The half-bit threshold curve (van Heel & Schatz 2005).
    resolution_px : float
        Period (px) where the FRC first falls below the half-bit curve; 2
        (Nyquist) when it never does.
    """

    frequency: np.ndarray
    correlation: np.ndarray
    half_bit: np.ndarray
    resolution_px: float


def frc(a: Array, b: Array, region: Array | None = None, align: bool = True) -> FRC:
    """Fourier ring correlation of two images of the same object (two half-data reconstructions).

    *b* is first aligned to *a* (sub-pixel shift, phase ramp, global phase);
    both are apodised with a Hann window over their common *region*'s
    bounding box, which is the part compared.
    """
    xp = get_xp(a)
    a = xp.asarray(a)
    b = xp.asarray(b)
    if align:
        b = align_object(b, a, region).aligned
    if region is not None:
        rows = np.flatnonzero(to_numpy(xp.any(region, axis=1)))
        cols = np.flatnonzero(to_numpy(xp.any(region, axis=0)))
        sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        a, b = a[sl], b[sl]
    inner = xp.vdot(b, a)
    b = b * (inner / abs(inner))  # global phase
    ny, nx = a.shape
    win = xp.asarray(np.outer(np.hanning(ny), np.hanning(nx)).astype(np.float32))
    fa = fft2((a - xp.mean(a)) * win)
    fb = fft2((b - xp.mean(b)) * win)
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    k = np.hypot(ky * 1.0, kx * 1.0)
    step = 1.0 / min(ny, nx)
    ring = np.minimum((k / step).astype(int), int(0.5 / step))
    n_rings = int(0.5 / step) + 1
    ring_x = xp.asarray(ring.ravel())
    num = to_numpy(xp.bincount(ring_x, weights=(fa * xp.conj(fb)).real.ravel(), minlength=n_rings))
    da = to_numpy(xp.bincount(ring_x, weights=xp.abs(fa).ravel() ** 2, minlength=n_rings))
    db = to_numpy(xp.bincount(ring_x, weights=xp.abs(fb).ravel() ** 2, minlength=n_rings))
    count = np.bincount(ring.ravel(), minlength=n_rings).astype(float)
    corr = num / np.sqrt(np.maximum(da * db, 1e-30))
    freq = np.arange(n_rings) * step
    # half-bit threshold with n pixels in the ring
    sq = np.sqrt(np.maximum(count, 1))
    half_bit = (0.2071 + 1.9102 / sq) / (1.2071 + 0.9102 / sq)
    below = np.flatnonzero((corr < half_bit) & (freq > 0))
    res = 1.0 / freq[below[0]] if len(below) else 2.0
    return FRC(freq, corr, half_bit, float(res))
