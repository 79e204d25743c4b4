"""Dark statistics streamed over dark frames: running mean and variance per pixel."""

from __future__ import annotations

from dataclasses import dataclass

from ._array import Array, get_xp


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

    def __init__(self, shape: tuple[int, ...], xp: object) -> None:
        x = get_xp(xp) if isinstance(xp, str) else xp
        self.xp = x
        self.shape = tuple(shape)
        self.count = x.zeros(shape, dtype=x.float64)  # type: ignore[attr-defined]
        self.mean = x.zeros(shape, dtype=x.float64)  # type: ignore[attr-defined]
        self.m2 = x.zeros(shape, dtype=x.float64)  # type: ignore[attr-defined]
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
        """Mean, standard deviation and bad-pixel mask as float32 arrays."""
        s = settings or DarkSettings()
        xp = self.xp
        std = xp.sqrt(self.variance).astype(xp.float32)
        bad = (std == 0) | (std > s.max_std_adu)
        return DarkResult(self.mean.astype(xp.float32), std, bad, self.n_frames)


@dataclass(frozen=True)
class DarkSettings:
    """Bad-pixel criteria.

    Attributes
    ----------
    max_std_adu : float
        A pixel whose dark standard deviation exceeds this is bad (noisy).
        A standard deviation of exactly 0 (stuck, or never valid) is bad too.
    """

    max_std_adu: float = 30.0


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
    """

    mean: Array
    std: Array
    bad: Array
    n_frames: int
