"""Cleaning raw FCCD frames into photon-count frames: the nine preprocessing steps.

Every step is a function on a stack of frames ``(N, ...)`` that takes and
returns NumPy or CuPy arrays alike. Steps that act on an ADC channel over its
readout time work in *channel layout* ``(N, 2, channels, rows, 12)`` (see
:class:`~bluesky_ptycho.core.fccd.RawRegion`); the others on images
``(N, H, W)``:

1. :func:`center_of_mass` — pattern centre, from the thresholded mean pattern
2. :func:`subtract_dark` — dark mean, with bad pixels, bad channels and lost
   samples (dropped packets) masked
3. :func:`overscan_fit` / :func:`subtract_overscan` — per-channel polynomial in
   readout time fitted to the overscan samples
4. :func:`subtract_background` — per-column mean of the background pixels
5. :func:`remove_ripple` — pickup lines found in the background's spectrum
   along readout time, fitted per channel and subtracted
6. :func:`threshold_photons` — threshold (mask dilated 2 × 2), ADU → photons
7. :func:`divide_beamstop` — undo the beamstop's transmission
8. :func:`crop_center` — symmetric crop around the centre
9. :func:`fourier_downsample` — crop of the Fourier transform with a soft
   (erf) or Gaussian window

plus :func:`merge_hdr` (double exposure) and :func:`subtract_noise_floor`.
:class:`Preprocessor` chains them for one scan: it is built once from the
dark statistics and the settings, and then cleans batches, touching only the
raw samples its crop needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import fccd
from ._array import Array, get_xp, irfft2, rfft, rfft2, to_numpy
from .dark import DarkResult
from .geometry import Beamstop

WINDOWS = ("erf", "gaussian")


@dataclass(frozen=True)
class CleanSettings:
    """Parameters of the cleaning steps (all in one place).

    Attributes
    ----------
    adu_per_photon : float
        Detector gain, ADU per photon at the working energy.
    threshold_adu : float
        "hnu": samples below this (after offsets are removed) are background,
        pixels above it hold photons. About 15 ADU at 800 eV: under half a
        photon, three times the read noise.
    overscan_order : int
        Order (0, 1 or 2) of the polynomial in readout time fitted to each
        channel's overscan.
    overscan_skip_rows : (int, int)
        Readout rows left out of the fit at the start and the end.
    background : bool
        Subtract the mean of each column's background pixels (step 4).
    ripple : bool
        Find and remove high-frequency pickup lines (step 5).
    ripple_threshold : float
        A frequency is pickup when its power, averaged over the channels of
        the batch, exceeds this many times the median power.
    ripple_max_lines : int
        At most this many pickup lines, the strongest first.
    ripple_min_cycles : float
        Frequencies below this (cycles per clocked sample) are left to the
        overscan and background steps.
    threshold_dilate : bool
        Keep the 2 × 2 neighbours of pixels above the threshold (a photon's
        charge may split between pixels).
    beamstop : Beamstop
        Divided out inside its radius (step 7); none by default.
    center_px : (float, float) or None
        Pattern centre (row, col) on the detector image; None finds it from
        the first batch (step 1).
    crop_px : int
        Side of the region cut out around the centre, in detector pixels.
    frame_px : int
        Side of the output frames after Fourier downsampling.
    window : {"erf", "gaussian"}
        Downsampling window: ``(erf((0.99·m/2 − r)/window_width) + 1)/2`` in
        Fourier space, or a Gaussian kernel of σ = ``window_width`` detector
        pixels in real space.
    window_width : float
    noise_floor_photons : float
        Subtracted from the output, which is then clipped at 0.
    saturation_adu : float
        Raw samples at or above this are saturated; a frame with saturated
        pixels inside its crop is flagged.
    """

    adu_per_photon: float = 36.5
    threshold_adu: float = 15.0
    overscan_order: int = 2
    overscan_skip_rows: tuple[int, int] = (100, 80)
    background: bool = True
    ripple: bool = True
    ripple_threshold: float = 10.0
    ripple_max_lines: int = 8
    ripple_min_cycles: float = 0.01
    threshold_dilate: bool = True
    beamstop: Beamstop = field(default_factory=Beamstop)
    center_px: tuple[float, float] | None = None
    crop_px: int = 512
    frame_px: int = 128
    window: str = "erf"
    window_width: float = 8.0
    noise_floor_photons: float = 0.0
    saturation_adu: float = 65535.0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"CleanSettings.{name}={getattr(self, name)!r} {why}")

        if isinstance(self.beamstop, dict):
            object.__setattr__(self, "beamstop", Beamstop.from_dict(self.beamstop))
        if self.center_px is not None:
            object.__setattr__(self, "center_px", tuple(float(c) for c in self.center_px))
        object.__setattr__(self, "overscan_skip_rows", tuple(self.overscan_skip_rows))
        if not self.adu_per_photon > 0:
            bad("adu_per_photon", "must be > 0 (ADU per photon at the working energy)")
        if not self.threshold_adu > 0:
            bad("threshold_adu", "must be > 0 ADU (about 3 × the read noise)")
        if self.overscan_order not in (0, 1, 2):
            bad("overscan_order", "must be 0, 1 or 2")
        lo, hi = self.overscan_skip_rows
        if lo < 0 or hi < 0 or lo + hi > fccd.CLOCKED_ROWS - 10:
            bad("overscan_skip_rows", f"leaves fewer than 10 of the {fccd.CLOCKED_ROWS} "
                "readout rows to fit")
        if not self.ripple_threshold > 1:
            bad("ripple_threshold", "must be > 1 (times the median power; 10 is usual)")
        if not 0 <= self.ripple_max_lines <= 64:
            bad("ripple_max_lines", "must be between 0 and 64")
        if not 0 <= self.ripple_min_cycles < 0.5:
            bad("ripple_min_cycles", "must lie in [0, 0.5) cycles per sample")
        if self.frame_px < 2 or self.frame_px % 2:
            bad("frame_px", "must be even and >= 2")
        if self.crop_px % self.frame_px or self.crop_px > min(fccd.IMAGE_SHAPE):
            bad("crop_px", f"must be a multiple of frame_px={self.frame_px} and at most "
                f"{min(fccd.IMAGE_SHAPE)}")
        if self.window not in WINDOWS:
            bad("window", f"is not known: use one of {WINDOWS}")
        if not self.window_width > 0:
            bad("window_width", "must be > 0 pixels")
        if not self.noise_floor_photons >= 0:
            bad("noise_floor_photons", "must be >= 0 photons")
        if not self.saturation_adu > self.threshold_adu:
            bad("saturation_adu", "must exceed threshold_adu")

    def as_dict(self) -> dict:
        """Plain dict for documents (the beamstop as a dict)."""
        d = asdict(self)
        d["beamstop"] = self.beamstop.as_dict()
        d["center_px"] = list(self.center_px) if self.center_px is not None else None
        d["overscan_skip_rows"] = list(self.overscan_skip_rows)
        return d


# ---------------------------------------------------------------- 1. centre
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


# ---------------------------------------------------------------- 2. dark
def subtract_dark(layout: Array, dark: Array) -> Array:
    """``layout − dark`` in place (float32 channel layout, any matching shape); returns it."""
    layout -= dark
    return layout


# ---------------------------------------------------------------- 3. overscan
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


# ---------------------------------------------------------------- 4. background
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


# ---------------------------------------------------------------- 5. ripple
def ripple_lines(
    series: Array, background: Array, power_threshold: float = 10.0, min_cycles: float = 0.01,
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
    freqs = ripple_lines(series[..., ::4, :], bg[..., ::4, :], power_threshold, min_cycles,
                         max_lines)
    estimate = fit_ripple(series, bg, freqs)
    series -= estimate
    return estimate.reshape(shape)


# ---------------------------------------------------------------- 6. photons
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


# ---------------------------------------------------------------- 7. beamstop
def divide_beamstop(image: Array, transmission: Array) -> Array:
    """Divide images (N, H, W) by the beamstop's transmission map (H, W), in place."""
    image /= transmission
    return image


# ---------------------------------------------------------------- 8. crop
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


# ---------------------------------------------------------------- 9. downsample
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
        raise ValueError(f"frames of shape {frames.shape[-2:]} → {out_px}: both must be square, even")
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


# ---------------------------------------------------------------- HDR and noise floor
def merge_hdr(
    long: Array, short: Array, t_long: float, t_short: float, saturation_adu: float
) -> Array:
    """Merge dark-subtracted long and short exposures into one high-dynamic-range frame.

    Where the long exposure is below *saturation_adu* it is kept; elsewhere
    the short one, scaled by ``t_long / t_short``, replaces it. Any matching
    shapes (frames or stacks), NumPy or CuPy; returns float32.
    """
    if not t_long > t_short > 0:
        raise ValueError(
            f"merge_hdr: t_long={t_long!r} s must exceed t_short={t_short!r} s > 0"
        )
    xp = get_xp(long)
    unsaturated = long < saturation_adu
    return xp.where(unsaturated, long, short * (t_long / t_short)).astype(xp.float32)


def subtract_noise_floor(frames: Array, floor: float) -> Array:
    """``max(frames − floor, 0)`` in place; returns *frames*."""
    xp = get_xp(frames)
    if floor:
        frames -= xp.float32(floor)
    return xp.maximum(frames, 0, out=frames)


# ---------------------------------------------------------------- the chain
@dataclass
class CleanedBatch:
    """A cleaned batch.

    Attributes
    ----------
    frames : (N, frame_px, frame_px) float32, NumPy or CuPy
        Photon counts, DC at ``frame_px//2``, never negative.
    flags : list of str
        Per frame, why it should not be used ("" when it can).
    lost_samples, saturated : (N,) int
        Lost (dropped-packet) and saturated raw samples inside the crop.
    ripple_adu : (N,) float
        RMS of the ripple removed.
    """

    frames: Array
    flags: list[str]
    lost_samples: np.ndarray
    saturated: np.ndarray
    ripple_adu: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """True for the frames with no flag."""
        return np.array([not f for f in self.flags], bool)


class Preprocessor:
    """The nine steps, set up for one scan, applied to batches of raw frames.

    Built once from the dark statistics and the settings; each call cleans a
    batch ``(N, 1152, 1940)`` into ``(N, frame_px, frame_px)`` photon frames.
    Only the raw samples under the crop (and the overscan of their channels)
    are converted and processed, so the cost per frame is set by the crop,
    not by the 2.2 million samples of the detector.

    Parameters
    ----------
    dark : DarkResult or None
        Dark statistics of the scan. None (no darks taken): the overscan fit
        alone removes the offsets and no pixel is masked; cleaning works but
        hot pixels pass.
    settings : CleanSettings
    xp : module or str
        ``numpy``/``cupy`` or ``"cpu"``/``"gpu"``.
    """

    def __init__(self, dark: DarkResult | None, settings: CleanSettings, xp: Any = np) -> None:
        self.xp = get_xp(xp) if isinstance(xp, str) else xp
        self.settings = settings
        x = self.xp
        if dark is not None and tuple(dark.mean.shape) != fccd.RAW_SHAPE:
            raise ValueError(
                f"dark statistics of shape {tuple(dark.mean.shape)} cannot clean FCCD frames of "
                f"{fccd.RAW_SHAPE}: take darks with the same detector settings"
            )
        self.dark = dark
        if dark is not None:
            self._dark_raw = x.asarray(dark.mean, dtype=x.float32)
            bad = x.asarray(dark.bad, dtype=bool)
            if dark.bad_channels is not None:
                bad_ch = x.asarray(dark.bad_channels, dtype=bool)
                per_channel = x.broadcast_to(bad_ch[:, None], (fccd.N_CHANNELS, fccd.CLOCKED_ROWS))
                bad = bad.copy()
                fccd.raw_blocks(bad)[...] |= fccd.per_channel_to_raw(per_channel)
            self._bad_raw = bad
        self.center: tuple[float, float] | None = settings.center_px
        self.region: fccd.RawRegion | None = None
        if self.center is not None:
            self._set_center(self.center)

    # -- pickling (a Dask worker gets its own copy; the array module goes by name) -----
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["xp"] = "gpu" if self.xp.__name__ == "cupy" else "cpu"
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state["xp"] = get_xp(state["xp"])
        self.__dict__.update(state)

    # -- set-up -----------------------------------------------------------------
    def _set_center(self, center: tuple[float, float]) -> None:
        s, x = self.settings, self.xp
        self.center = (float(center[0]), float(center[1]))
        self.crop = (*crop_window(self.center, s.crop_px), s.crop_px, s.crop_px)
        self.region = fccd.RawRegion.covering(*self.crop)
        self._calib = self._layouts(self.region)
        self._beamstop = x.asarray(s.beamstop.transmission_map(self.crop[2:], self.crop[:2]))
        self._window = downsample_window(s.frame_px, s.crop_px, s.window, s.window_width, x)

    def _layouts(self, region: fccd.RawRegion) -> tuple[Array, Array, Array]:
        """Dark mean, dark overscan and usable-pixel mask in the channel layout of *region*."""
        x = self.xp
        if self.dark is not None:
            return (region.take(self._dark_raw), region.overscan(self._dark_raw),
                    ~region.take(self._bad_raw))
        return (x.zeros(region.shape, x.float32),
                x.zeros((2, region.n_channels, fccd.CLOCKED_ROWS, 2), x.float32),
                x.ones(region.shape, bool))

    # -- the steps, in channel layout ---------------------------------------------
    def _channel_steps(
        self, raw: Array, region: fccd.RawRegion, calib: tuple[Array, Array, Array]
    ) -> tuple[Array, Array, Array]:
        s, x = self.settings, self.xp
        dark, dark_ov, good = calib
        n = raw.shape[0]
        layout = region.take(raw, out=x.empty((n, *region.shape), x.float32))
        flat = layout.reshape(n, -1)
        # lost samples (dropped packets arrive as zeros) and saturation are rare: look
        # closer only at the frames that have any
        counts = x.zeros((2, n), x.int64)
        usable = good
        if bool((flat.min(axis=1) == 0).any()):
            lost = layout == 0
            usable = good & ~lost
            counts[0] = (lost & good)[..., : fccd.PIXEL_COLUMNS].reshape(n, -1).sum(axis=1)
        if bool((flat.max(axis=1) >= s.saturation_adu).any()):
            sat = (layout >= s.saturation_adu)[..., : fccd.PIXEL_COLUMNS]
            counts[1] = sat.reshape(n, -1).sum(axis=1)
        subtract_dark(layout, dark)
        ov = region.overscan(raw)
        ov_valid = ov != 0
        ov = ov.astype(x.float32) - dark_ov
        offsets = overscan_fit(ov, s.overscan_order, s.overscan_skip_rows, ov_valid)
        subtract_overscan(layout, offsets, region.rows)
        if s.background:
            subtract_background(layout, s.threshold_adu, usable)
        ripple = x.zeros(layout.shape[0], x.float32)
        if s.ripple and s.ripple_max_lines:
            est = remove_ripple(layout, s.threshold_adu, usable, s.ripple_threshold,
                                s.ripple_min_cycles, s.ripple_max_lines)
            ripple = x.sqrt((est**2).mean(axis=(1, 2, 3, 4)))
        layout *= usable
        return layout, counts, ripple

    def _image_steps(self, image: Array, transmission: Array) -> Array:
        s = self.settings
        threshold_photons(image, s.threshold_adu, s.adu_per_photon, s.threshold_dilate)
        return divide_beamstop(image, transmission)

    def find_center(self, raw: Array) -> tuple[float, float]:
        """Step 1: centre of mass of the batch's thresholded mean pattern, on the whole detector."""
        x = self.xp
        region = fccd.RawRegion.full()
        layout, _, _ = self._channel_steps(x.asarray(raw), region, self._layouts(region))
        image = region.assemble(layout, 0, 0, *fccd.IMAGE_SHAPE)
        image = self._image_steps(
            image, x.asarray(self.settings.beamstop.transmission_map(fccd.IMAGE_SHAPE))
        )
        return center_of_mass(image)

    # -- cleaning ---------------------------------------------------------------------
    def __call__(self, raw: Array) -> CleanedBatch:
        """Clean raw frames ``(N, 1152, 1940)`` (NumPy or CuPy, any integer or float dtype)."""
        s, x = self.settings, self.xp
        raw = x.asarray(raw)
        if raw.ndim != 3 or tuple(raw.shape[1:]) != fccd.RAW_SHAPE:
            raise ValueError(
                f"raw frames have shape {tuple(raw.shape)}, expected (N, *{fccd.RAW_SHAPE})"
            )
        if self.region is None:
            self._set_center(self.find_center(raw))
        assert self.region is not None
        layout, counts, ripple = self._channel_steps(raw, self.region, self._calib)
        image = self.region.assemble(layout, *self.crop)
        image = self._image_steps(image, self._beamstop)
        frames = fourier_downsample(image, s.frame_px, win=self._window)
        frames = subtract_noise_floor(frames, s.noise_floor_photons)
        lost, sat = to_numpy(counts)
        flags = [
            "; ".join(
                p
                for p in (
                    f"{int(n_lost)} samples lost (dropped packets) inside the crop" if n_lost else "",
                    f"{int(n_sat)} saturated pixels inside the crop (use the beamstop or HDR)"
                    if n_sat else "",
                )
                if p
            )
            for n_lost, n_sat in zip(lost, sat, strict=True)
        ]
        return CleanedBatch(frames, flags, lost.astype(int), sat.astype(int), to_numpy(ripple))
