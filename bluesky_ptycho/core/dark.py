"""Dark statistics streamed over dark frames: per pixel and per ADC channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bluesky_ptycho.core import fccd
from bluesky_ptycho.core.arrays import Array, get_xp
from bluesky_ptycho.core.params import Declared, setting, settings


class RunningDarkStats:
    """Mean and variance per pixel over frames given one batch at a time.

    Chan's parallel update of Welford's sums (float64), so the result equals a
    direct computation over all frames at once. Zeros are dropped packets and
    do not count (each pixel has its own count).

    Parameters
    ----------
    shape : tuple of int
        Frame shape, e.g. the raw FCCD ``(1152, 1940)``.
    xp : module
        ``numpy`` or ``cupy``.
    """

    def __init__(self, shape: tuple[int, ...], xp: Any) -> None:
        x = get_xp(xp) if isinstance(xp, str) else xp
        self.xp = x
        self.shape = tuple(shape)
        self.count = x.zeros(shape, dtype=x.float64)
        self.mean = x.zeros(shape, dtype=x.float64)
        self.m2 = x.zeros(shape, dtype=x.float64)
        self.n_frames = 0

    def update(self, frames: Array) -> None:
        """Add a batch of frames ``(k, *shape)`` (or one frame of ``shape``)."""
        xp = self.xp
        f = xp.asarray(frames)
        if f.shape == self.shape:
            f = f[None]
        if f.shape[1:] != self.shape:
            raise ValueError(f"dark frame of shape {f.shape[1:]} given, expected {self.shape}")
        valid = f != 0
        nb = valid.sum(axis=0, dtype=xp.float64)
        fv = xp.where(valid, f, 0).astype(xp.float64)
        sb = fv.sum(axis=0)
        mb = xp.divide(sb, nb, out=xp.zeros_like(sb), where=nb > 0)
        m2b = xp.where(valid, (fv - mb) ** 2, 0).sum(axis=0)
        n = self.count + nb
        delta = mb - self.mean
        safe = xp.maximum(n, 1)
        self.mean += delta * nb / safe
        self.m2 += m2b + delta**2 * self.count * nb / safe
        self.count = n
        self.n_frames += f.shape[0]

    @property
    def variance(self) -> Array:
        """Unbiased variance per pixel (0 where fewer than two valid frames)."""
        xp = self.xp
        return xp.where(self.count > 1, self.m2 / xp.maximum(self.count - 1, 1), 0)

    def result(self, settings: DarkSettings | None = None) -> DarkResult:
        """Mean, standard deviation, bad pixels and bad ADC channels as float32/bool arrays.

        With no valid frame at all, every pixel is marked bad (nothing is known).
        """
        s = settings or DarkSettings()
        xp = self.xp
        std = xp.sqrt(self.variance).astype(xp.float32)
        bad = (std == 0) | (std > s.max_std_adu)
        ch_mean = ch_std = bad_ch = None
        if self.shape == fccd.RAW_SHAPE:
            ch_mean, ch_std, bad_ch = channel_statistics(self.mean, std, s.channel_excess_adu)
        return DarkResult(
            self.mean.astype(xp.float32), std, bad, self.n_frames, ch_mean, ch_std, bad_ch
        )


def channel_statistics(mean: Array, std: Array, excess_adu: float) -> tuple[Array, Array, Array]:
    """Per ADC channel: mean offset, typical noise, and whether the channel is bad.

    Parameters
    ----------
    mean, std : (1152, 1940) arrays
        Dark mean and standard deviation per raw sample.
    excess_adu : float
        A channel is bad when its noise exceeds the median channel's by more than this.

    Returns
    -------
    mean, std : (192,) float32
        Mean of the channel's pixel means; median of its pixel standard
        deviations (robust to the few hot pixels a channel may hold).
    bad : (192,) bool
    """
    xp = get_xp(mean)
    region = fccd.RawRegion.full()
    m = region.take(mean)[..., : fccd.PIXEL_COLUMNS].reshape(fccd.N_CHANNELS, -1)
    sd = region.take(std)[..., : fccd.PIXEL_COLUMNS].reshape(fccd.N_CHANNELS, -1)
    ch_mean = m.mean(axis=1).astype(xp.float32)
    ch_std = xp.median(sd, axis=1).astype(xp.float32)
    bad = ch_std > xp.median(ch_std) + excess_adu
    return ch_mean, ch_std, bad


@settings(frozen=True)
class DarkSettings(Declared):
    """Bad-pixel and bad-channel criteria."""

    max_std_adu: float = setting(
        default=30.0, doc="A pixel whose dark standard deviation exceeds this is bad (noisy); a standard "
        "deviation of exactly 0 (stuck, or never valid) is bad too.", unit="ADU", min=0,
        max=65535, exclusive="min",
    )  # fmt: skip
    channel_excess_adu: float = setting(
        default=15.0, doc="An ADC channel whose typical dark noise exceeds the median channel's by more "
        "than this is bad. COSMIC uses 50 ADU; with the FCCD's ~5 ADU read noise, 15 ADU "
        "already marks a channel three times as noisy as the rest, which the photon threshold "
        "(~15 ADU) cannot tell from light.", unit="ADU", min=0, max=65535, exclusive="min",
    )  # fmt: skip


@dataclass
class DarkResult:
    """Dark statistics of one scan.

    Attributes
    ----------
    mean : (*shape) float32
    std : (*shape) float32
    bad : (*shape) bool
        Bad pixels (std == 0 or above the threshold).
    n_frames : int
    channel_mean, channel_std : (192,) float32, or None for a non-FCCD shape
    bad_channels : (192,) bool, or None
    """

    mean: Array
    std: Array
    bad: Array
    n_frames: int
    channel_mean: Array | None = None
    channel_std: Array | None = None
    bad_channels: Array | None = None
