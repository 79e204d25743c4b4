"""The nine cleaning steps, each a function on a stack of frames (NumPy or CuPy)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bluesky_ptycho.core import fccd
from bluesky_ptycho.core.arrays import Array, get_xp, irfft2, rfft, rfft2, to_numpy
from bluesky_ptycho.core.clean.settings import WINDOWS


def center_of_mass(frames: Array) -> tuple[float, float]:
    """Centre of mass (row, col) of the summed frames (N, H, W)."""
    xp = get_xp(frames)
    total = frames.sum(axis=0)
    s = float(total.sum())
    if not s > 0:
        raise ValueError(
            "cannot find the pattern centre: the frames hold no signal above threshold "
            "(shutter closed? give CleanSettings.center_px)"
        )
    rows = xp.arange(total.shape[0], dtype=xp.float64)
    cols = xp.arange(total.shape[1], dtype=xp.float64)
    return float(total.sum(axis=1) @ rows) / s, float(total.sum(axis=0) @ cols) / s


def subtract_dark(layout: Array, dark: Array) -> Array:
    """``layout − dark`` in place (float32 channel layout, any matching shape); returns it."""
    layout -= dark
    return layout


def overscan_fit(
    overscan: Array,
    order: int = 2,
    skip_rows: tuple[int, int] = (100, 80),
    valid: Array | None = None,
) -> Array:
    """Per-channel polynomial in readout time fitted to the overscan samples.

    Parameters
    ----------
    overscan : (..., 970, 2) float
        Dark-subtracted overscan samples, per channel over all readout rows
        (e.g. ``(N, 2, channels, 970, 2)`` from ``RawRegion.overscan``).
    order : int
        Polynomial order (0, 1 or 2) in readout time.
    skip_rows : (int, int)
        Readout rows left out at the start and end.
    valid : (..., 970, 2) bool, optional
        Samples to use (lost ones, from dropped packets, are not).

    Returns
    -------
    (..., 970) float32
        The fitted offset of every channel at every readout row.
    """
    xp = get_xp(overscan)
    t = xp.linspace(-1, 1, fccd.CLOCKED_ROWS, dtype=xp.float64)
    basis = xp.stack([t**k for k in range(order + 1)], axis=1)  # (970, k)
    lo, hi = skip_rows
    rows = xp.zeros(fccd.CLOCKED_ROWS, dtype=xp.float32)
    rows[lo : fccd.CLOCKED_ROWS - hi] = 1
    if valid is not None and bool(valid.all()):
        valid = None
    if valid is None:
        # every sample there: one least-squares operator for all channels
        y = overscan[..., 0] + overscan[..., 1]
        fit = xp.flatnonzero(rows)
        pinv = xp.linalg.pinv(basis[fit]).astype(xp.float32)  # (k, rows fitted)
        coef = (y[..., fit] * 0.5) @ pinv.T
        return (coef @ basis.T.astype(xp.float32)).astype(xp.float32, copy=False)
    # lost samples (dropped packets) have zero weight: one small normal system per channel
    v0, v1 = valid[..., 0], valid[..., 1]
    y = (overscan[..., 0] * v0 + overscan[..., 1] * v1) * rows
    w = (v0.astype(xp.float32) + v1) * rows
    k = order + 1
    outer = (basis[:, :, None] * basis[:, None, :]).reshape(fccd.CLOCKED_ROWS, k * k)
    gram = (w.astype(xp.float64) @ outer).reshape(*w.shape[:-1], k, k) + 1e-9 * xp.eye(k)
    rhs = y.astype(xp.float64) @ basis
    coef = xp.linalg.solve(gram, rhs[..., None])[..., 0]
    return (coef @ basis.T).astype(xp.float32)


def subtract_overscan(layout: Array, offsets: Array, rows: tuple[int, int]) -> Array:
    """Subtract fitted offsets ``(N, 2, channels, 970)`` from a channel layout, in place.

    *rows* are the readout rows the layout holds.
    """
    layout -= offsets[..., rows[0] : rows[1], None]
    return layout


def subtract_background(layout: Array, threshold_adu: float, usable: Array) -> Array:
    """Subtract from each column the mean of its background samples, in place.

    A column is one clocked column of one channel over the layout's rows;
    background samples are usable ones with ``|x| < threshold_adu``.
    """
    xp = get_xp(layout)
    bg = ((layout < threshold_adu) & (layout > -threshold_adu) & usable).astype(xp.float32)
    ones = xp.ones(layout.shape[-2], xp.float32)  # sums over rows as products: much faster
    n = ones @ bg
    bg *= layout
    layout -= ((ones @ bg) / xp.maximum(n, 1))[..., None, :]
    return layout


def ripple_lines(
    series: Array,
    background: Array,
    power_threshold: float = 10.0,
    min_cycles: float = 0.01,
    max_lines: int = 8,
) -> np.ndarray:
    """Frequencies of the pickup lines in channels' background samples.

    Parameters
    ----------
    series : (..., T) float
        Samples of each channel in readout order.
    background : (..., T) bool
        Which samples are background (the others count as 0).
    power_threshold : float
        A line is a run of frequency bins whose power, averaged over all the
        channels and frames given, exceeds this many times the median.
    min_cycles : float
        Frequencies below this (cycles per sample) are not looked at.
    max_lines : int
        At most this many lines, the strongest first.

    Returns
    -------
    (K,) float64 NumPy array
        Frequencies in cycles per sample, each refined between bins from the
        power of its neighbours (the ratio of a rectangular window's sinc).
    """
    n_t = series.shape[-1]
    spec = rfft(series * background)
    power = spec.real**2 + spec.imag**2
    mean = to_numpy(power.reshape(-1, power.shape[-1]).mean(axis=0)).astype(np.float64)
    lo = max(1, int(np.ceil(min_cycles * n_t)))
    floor = np.median(mean[lo:]) if len(mean) > lo else 0.0
    above = mean > power_threshold * floor
    above[:lo] = False
    above[-1] = False
    lines = []
    k = lo
    while k < len(mean) - 1:
        if not above[k]:
            k += 1
            continue
        run_end = k
        while run_end + 1 < len(mean) and above[run_end + 1]:
            run_end += 1
        b = k + int(np.argmax(mean[k : run_end + 1]))
        amp = np.sqrt(mean[b - 1 : b + 2])
        if amp[2] >= amp[0]:
            delta = amp[2] / (amp[1] + amp[2])
        else:
            delta = -amp[0] / (amp[1] + amp[0])
        lines.append((mean[b], (b + delta) / n_t))
        k = run_end + 1
    lines.sort(reverse=True)
    return np.array([f for _, f in lines[:max_lines]], dtype=np.float64)


def fit_ripple(series: Array, background: Array, freqs: np.ndarray) -> Array:
    """Per-channel least-squares fit of pickup lines at *freqs* to the background samples.

    Each line is fitted with ``cos``, ``sin`` and, to absorb a small error
    in its frequency, ``τ·cos`` and ``τ·sin`` (τ: readout time, −1…1).
    Only background samples count, so the photons a channel holds do not
    pull the fit.

    Parameters
    ----------
    series : (..., T) float32
    background : (..., T) bool
    freqs : (K,) float
        Cycles per sample (from :func:`ripple_lines`).

    Returns
    -------
    (..., T) float32
        The ripple over every sample (background or not).
    """
    xp = get_xp(series)
    n_t = series.shape[-1]
    if not len(freqs):
        return xp.zeros_like(series)
    s = np.arange(n_t, dtype=np.float64)
    tau = (s - (n_t - 1) / 2) / ((n_t - 1) / 2)
    ph = 2 * np.pi * np.asarray(freqs)[None, :] * s[:, None]
    basis_np = np.concatenate(
        [np.cos(ph), np.sin(ph), tau[:, None] * np.cos(ph), tau[:, None] * np.sin(ph)], axis=1
    )  # (T, 4K)
    p = basis_np.shape[1]
    basis = xp.asarray(basis_np.astype(np.float32))
    iu, ju = np.triu_indices(p)  # the Gram matrix is symmetric: its upper triangle suffices
    outer = xp.asarray((basis_np[:, iu] * basis_np[:, ju]).astype(np.float32))
    w = background.reshape(-1, n_t).astype(xp.float32)
    y = series.reshape(-1, n_t) * w
    upper = (w @ outer).astype(xp.float64)
    gram = xp.zeros((w.shape[0], p, p), xp.float64)
    iu_x, ju_x = xp.asarray(iu), xp.asarray(ju)
    gram[:, iu_x, ju_x] = upper
    gram[:, ju_x, iu_x] = upper
    gram += 1e-6 * n_t * xp.eye(p)  # a channel with no background sample fits 0
    rhs = (y @ basis).astype(xp.float64)
    coef = xp.linalg.solve(gram, rhs[..., None])[..., 0].astype(xp.float32)
    return (coef @ basis.T).reshape(series.shape)


def remove_ripple(
    layout: Array,
    threshold_adu: float,
    usable: Array,
    power_threshold: float = 10.0,
    min_cycles: float = 0.01,
    max_lines: int = 8,
) -> Array:
    """Remove high-frequency pickup from each channel, in place; returns what was removed.

    Each channel's background samples (usable, ``|x| < threshold_adu``), in
    readout order (row by row, 12 clocked samples a row), are Fourier
    transformed along readout time; the lines standing above the noise
    (:func:`ripple_lines`) are fitted per channel to the background samples
    (:func:`fit_ripple`) and subtracted from every sample. Fitting the lines
    rather than masking and back-transforming bins leaves neither the
    window's leakage nor the masked bins' noise behind.

    Parameters
    ----------
    layout : (N, 2, channels, rows, 12) float32

    Returns
    -------
    (N, 2, channels, rows, 12) float32
    """
    shape = layout.shape
    n_t = shape[-2] * shape[-1]
    series = layout.reshape(*shape[:-2], n_t)
    bg = ((layout < threshold_adu) & (layout > -threshold_adu) & usable).reshape(series.shape)
    # pickup is common to all channels and stands hundreds of times above one channel's
    # noise: every 4th channel finds the lines at a quarter of the cost
    freqs = ripple_lines(
        series[..., ::4, :], bg[..., ::4, :], power_threshold, min_cycles, max_lines
    )
    estimate = fit_ripple(series, bg, freqs)
    series -= estimate
    return estimate.reshape(shape)


def threshold_photons(
    image: Array, threshold_adu: float, adu_per_photon: float, dilate: bool = True
) -> Array:
    """Keep pixels above *threshold_adu* (and, with *dilate*, their 2 × 2 neighbours),
    zero the rest, and convert ADU to photons; in place on float32 images (N, H, W)."""
    xp = get_xp(image)
    keep = image > threshold_adu
    if dilate:
        grown = keep.copy()
        grown[..., 1:, :] |= keep[..., :-1, :]
        grown[..., :, 1:] |= keep[..., :, :-1]
        grown[..., 1:, 1:] |= keep[..., :-1, :-1]
        keep = grown
    image *= keep
    image *= xp.float32(1.0 / adu_per_photon)
    return image


def divide_beamstop(image: Array, transmission: Array) -> Array:
    """Divide images (N, H, W) by the beamstop's transmission map (H, W), in place."""
    image /= transmission
    return image


def crop_window(center: tuple[float, float], size: int) -> tuple[int, int]:
    """Top-left image pixel of a ``size`` crop whose pixel ``size//2`` is *center*."""
    y0, x0 = round(center[0]) - size // 2, round(center[1]) - size // 2
    h, w = fccd.IMAGE_SHAPE
    if y0 < 0 or x0 < 0 or y0 + size > h or x0 + size > w:
        raise ValueError(
            f"a crop of {size} px around centre {tuple(round(c, 1) for c in center)} leaves the "
            f"{h}×{w} detector: lower crop_px or check the beam centre (CleanSettings.center_px)"
        )
    return y0, x0


def crop_center(image: Array, center: tuple[float, float], size: int) -> Array:
    """Cut ``(N, size, size)`` around *center* (row, col) of FCCD images, centre at ``size//2``."""
    y0, x0 = crop_window(center, size)
    return image[..., y0 : y0 + size, x0 : x0 + size]


def downsample_window(m: int, big: int, window: str, width: float, xp: Any = np) -> Array:
    """The window applied to the kept ``m × (m//2+1)`` half-spectrum (1 at DC)."""
    fy = np.fft.fftfreq(m) * m
    fx = np.arange(m // 2 + 1, dtype=np.float64)
    r = np.hypot(fy[:, None], fx[None, :])
    if window == "erf":
        from scipy.special import erf  # host side, tiny

        w = (erf((0.99 * m / 2 - r) / width) + 1) / 2
    elif window == "gaussian":
        # Fourier transform of a unit-sum Gaussian of σ = width on the big grid
        w = np.exp(-2 * (np.pi * width * r / big) ** 2)
    else:
        raise ValueError(f"window={window!r} is not known: use one of {WINDOWS}")
    w = w / w[0, 0]  # photon totals kept
    # the Nyquist row and column hold + and − frequencies in one: drop them, so that the
    # result does not depend on which of the two a transform keeps
    w[m // 2, :] = 0
    w[:, m // 2] = 0
    w = w.astype(np.float32)
    return w if xp is np else xp.asarray(w)


def fourier_downsample(
    frames: Array, out_px: int, window: str = "erf", width: float = 8.0, win: Array | None = None
) -> Array:
    """Downsample patterns (N, M, M) to (N, m, m) by cropping their Fourier transform.

    The transform of an intensity pattern is the autocorrelation of the exit
    wave; keeping its central ``m × m`` with a soft window shrinks the real-
    space field of view to ``m/M`` of what it was and leaves the resolution as
    it was. Photon totals are kept; DC stays at the centre (``M//2`` →
    ``m//2``; with both even the two centring shifts cancel, so none is done).
    *win* is a precomputed :func:`downsample_window`.
    """
    xp = get_xp(frames)
    big = frames.shape[-1]
    if big % 2 or out_px % 2 or frames.shape[-2] != big:
        raise ValueError(
            f"frames of shape {frames.shape[-2:]} → {out_px}: both must be square, even"
        )
    if big == out_px:
        return frames.astype(xp.float32, copy=True)
    if win is None:
        win = downsample_window(out_px, big, window, width, xp)
    f = rfft2(frames.astype(xp.float32, copy=False))
    h = out_px // 2
    small = xp.concatenate([f[..., :h, : h + 1], f[..., big - h :, : h + 1]], axis=-2)
    small *= win
    out = irfft2(small, (out_px, out_px))  # Σ out = small[0, 0] = Σ frames
    return out.astype(xp.float32, copy=False)


def merge_hdr(
    long: Array, short: Array, t_long: float, t_short: float, saturation_adu: float
) -> Array:
    """Merge dark-subtracted long and short exposures into one high-dynamic-range frame.

    Where the long exposure is below *saturation_adu* it is kept; elsewhere
    the short one, scaled by ``t_long / t_short``, replaces it. Any matching
    shapes (frames or stacks), NumPy or CuPy; returns float32.
    """
    if not t_long > t_short > 0:
        raise ValueError(f"merge_hdr: t_long={t_long!r} s must exceed t_short={t_short!r} s > 0")
    xp = get_xp(long)
    unsaturated = long < saturation_adu
    return xp.where(unsaturated, long, short * (t_long / t_short)).astype(xp.float32)


def subtract_noise_floor(frames: Array, floor: float) -> Array:
    """``max(frames − floor, 0)`` in place; returns *frames*."""
    xp = get_xp(frames)
    if floor:
        frames -= xp.float32(floor)
    return xp.maximum(frames, 0, out=frames)
