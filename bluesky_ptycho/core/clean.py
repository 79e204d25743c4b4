"""Cleaning raw FCCD frames into photon-count frames for the reconstruction.

Each step is a function on a stack of frames ``(N, ...)`` that returns the
same kind of array; :func:`clean_frames` chains them with one
:class:`CleanSettings`. Steps done here: dark subtraction with the bad-pixel
mask, overscan offset fit and subtraction, descrambling, threshold below one
photon and conversion to photons, crop around the centre, Fourier
downsampling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import fccd
from ._array import Array, get_xp


@dataclass(frozen=True)
class CleanSettings:
    """Parameters of the cleaning steps (all in one place).

    Attributes
    ----------
    adu_per_photon : float
        Detector gain, ADU per photon at the working energy.
    threshold_adu : float
        Pixels below this (after offsets are removed) are background: set to 0.
        About 15 ADU: under one photon, above three times the read noise.
    overscan_order : int
        Order (1 or 2) of the polynomial in readout time fitted to each
        channel's overscan.
    overscan_skip_rows : (int, int)
        Readout rows left out of the fit at the start and the end.
    crop_px : int
        Side of the region cut out around the centre, in detector pixels.
    frame_px : int
        Side of the output frames after Fourier downsampling.
    window_width : float
        Softness (pixels of the autocorrelation) of the downsampling window
        ``(erf((0.99·m/2 − r)/width) + 1)/2``.
    """

    adu_per_photon: float = 36.5
    threshold_adu: float = 15.0
    overscan_order: int = 2
    overscan_skip_rows: tuple[int, int] = (100, 80)
    crop_px: int = 512
    frame_px: int = 128
    window_width: float = 8.0

    def __post_init__(self) -> None:
        if not self.adu_per_photon > 0:
            raise ValueError(f"CleanSettings.adu_per_photon={self.adu_per_photon} must be > 0")
        if self.overscan_order not in (0, 1, 2):
            raise ValueError(
                f"CleanSettings.overscan_order={self.overscan_order} must be 0, 1 or 2"
            )
        lo, hi = self.overscan_skip_rows
        if lo < 0 or hi < 0 or lo + hi > fccd.CLOCKED_ROWS - 10:
            raise ValueError(
                f"CleanSettings.overscan_skip_rows={self.overscan_skip_rows} leaves fewer than "
                f"10 of the {fccd.CLOCKED_ROWS} readout rows to fit"
            )
        if self.crop_px % self.frame_px or self.crop_px > min(fccd.IMAGE_SHAPE):
            raise ValueError(
                f"CleanSettings.crop_px={self.crop_px} must be a multiple of frame_px="
                f"{self.frame_px} and at most {min(fccd.IMAGE_SHAPE)}"
            )

    def as_dict(self) -> dict:
        """Plain dict for documents."""
        return asdict(self)


def subtract_dark(raw: Array, dark_mean: Array) -> Array:
    """``raw − dark`` as float32 (N, 1152, 1940)."""
    xp = get_xp(raw)
    return raw.astype(xp.float32) - xp.asarray(dark_mean, dtype=xp.float32)


def overscan_fit(raw: Array, order: int = 2, skip_rows: tuple[int, int] = (100, 80)) -> Array:
    """Per-channel polynomial in readout time fitted to the overscan samples.

    Parameters
    ----------
    raw : (N, 1152, 1940) float
        Dark-subtracted raw frames.
    order : int
        Polynomial order (0, 1 or 2).
    skip_rows : (int, int)
        Readout rows left out at the start and end.

    Returns
    -------
    (N, 192, 970) float32
        The fitted offset of every channel at every readout row.
    """
    xp = get_xp(raw)
    ov = fccd.overscan(raw).mean(axis=-1)  # (N, 192, 970)
    t = xp.linspace(-1, 1, fccd.CLOCKED_ROWS, dtype=xp.float64)
    basis = xp.stack([t**k for k in range(order + 1)], axis=1)  # (970, k)
    lo, hi = skip_rows
    fit_rows = slice(lo, fccd.CLOCKED_ROWS - hi)
    pinv = xp.linalg.pinv(basis[fit_rows])  # (k, rows)
    coef = ov[..., fit_rows].astype(xp.float64) @ pinv.T  # (N, 192, k)
    return (coef @ basis.T).astype(xp.float32)


def subtract_overscan(raw: Array, offsets: Array) -> Array:
    """Subtract per-channel offsets (N, 192, 970) from raw frames, in place; returns *raw*."""
    fccd.raw_blocks(raw)[...] -= fccd.per_channel_to_raw(offsets)
    return raw


def threshold_to_photons(image: Array, threshold_adu: float, adu_per_photon: float) -> Array:
    """Zero values below *threshold_adu*, convert the rest to photons (float32, in place)."""
    xp = get_xp(image)
    image[image < threshold_adu] = 0
    image *= xp.float32(1.0 / adu_per_photon)
    return image


def center_of_mass(frames: Array) -> tuple[float, float]:
    """Centre of mass (row, col) of the summed frames (N, H, W)."""
    xp = get_xp(frames)
    total = frames.sum(axis=0)
    s = float(total.sum())
    if s <= 0:
        raise ValueError(
            "cannot find the pattern centre: the frames hold no signal above threshold"
        )
    rows = xp.arange(total.shape[0], dtype=xp.float64)
    cols = xp.arange(total.shape[1], dtype=xp.float64)
    return float(total.sum(axis=1) @ rows) / s, float(total.sum(axis=0) @ cols) / s


def crop_center(image: Array, center: tuple[float, float], size: int) -> Array:
    """Cut ``(N, size, size)`` around *center* (row, col), the centre landing on ``size//2``."""
    cy, cx = round(center[0]), round(center[1])
    y0, x0 = cy - size // 2, cx - size // 2
    h, w = image.shape[-2:]
    if y0 < 0 or x0 < 0 or y0 + size > h or x0 + size > w:
        raise ValueError(
            f"a crop of {size} px around centre {center} leaves the {h}×{w} image: "
            "lower crop_px or check the beam centre"
        )
    return image[..., y0 : y0 + size, x0 : x0 + size]


def _window(m: int, width: float, xp: object) -> Array:
    from scipy.special import erf  # host-side, tiny

    f = np.fft.fftfreq(m) * m
    r = np.hypot(f[:, None], f[None, :])
    w = (erf((0.99 * m / 2 - r) / width) + 1) / 2
    w /= w[0, 0]  # 1 at DC, so that photon totals are kept whatever m and width
    return get_xp(xp).asarray(w.astype(np.float32)) if xp is not np else w.astype(np.float32)


def fourier_downsample(frames: Array, out_px: int, window_width: float = 8.0) -> Array:
    """Downsample patterns (N, M, M) to (N, m, m) by cropping their Fourier transform.

    The transform of an intensity pattern is the autocorrelation of the exit
    wave; keeping its central ``m × m`` with a soft window shrinks the real-
    space field of view to ``m/M`` of what it was and leaves the resolution as
    it was. Photon totals are kept. DC stays at the centre.
    """
    xp = get_xp(frames)
    n_in = frames.shape[-1]
    if n_in == out_px:
        return frames.astype(xp.float32, copy=True)
    f = xp.fft.fft2(xp.fft.ifftshift(frames, axes=(-2, -1)))
    h = out_px // 2
    idx = xp.concatenate([xp.arange(0, h), xp.arange(n_in - h, n_in)])
    small = f[..., idx[:, None], idx[None, :]] * _window(out_px, window_width, xp)
    out = xp.fft.ifft2(small).real  # numpy/cupy ifft2 keeps the total: Σ out = F[0]
    return xp.fft.fftshift(out, axes=(-2, -1)).astype(xp.float32)


def clean_frames(
    raw: Array,
    dark_mean: Array,
    bad_pixels: Array | None,
    center: tuple[float, float] | None,
    settings: CleanSettings,
) -> tuple[Array, tuple[float, float]]:
    """The cleaning steps in order, on a batch of raw frames.

    Parameters
    ----------
    raw : (N, 1152, 1940) uint16 or float
    dark_mean : (1152, 1940) float
    bad_pixels : (1152, 1940) bool, optional
        Set to 0 before descrambling.
    center : (row, col) or None
        Pattern centre on the image; None finds it from this batch.
    settings : CleanSettings

    Returns
    -------
    frames : (N, frame_px, frame_px) float32
        Photon counts, DC at the centre, never negative.
    center : (row, col)
        The centre used.
    """
    xp = get_xp(raw)
    x = subtract_dark(raw, dark_mean)
    x = subtract_overscan(x, overscan_fit(x, settings.overscan_order, settings.overscan_skip_rows))
    if bad_pixels is not None:
        x[..., bad_pixels] = 0
    image = fccd.raw_to_image(x)
    image = threshold_to_photons(image, settings.threshold_adu, settings.adu_per_photon)
    if center is None:
        center = center_of_mass(image)
    crop = crop_center(image, center, settings.crop_px)
    frames = fourier_downsample(crop, settings.frame_px, settings.window_width)
    return xp.maximum(frames, 0), center
