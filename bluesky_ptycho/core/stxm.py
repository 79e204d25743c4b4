"""The paper's image worker: STXM contrast per scan point and a probe estimate from the data.

Both work on cleaned frames ``(N, n, n)`` (photons, DC at ``n//2``), NumPy or CuPy.
"""

from __future__ import annotations

import numpy as np

from bluesky_ptycho.core.arrays import Array, fftshift2, get_xp, ifft2, ifftshift2
from bluesky_ptycho.core.params import Declared, setting, settings


def stxm_contrast(frames: Array) -> tuple[Array, Array, Array]:
    """Transmission and differential phase contrast of each frame.

    Returns
    -------
    photons : (N,) float
        Total counts (transmission STXM).
    dpc_y, dpc_x : (N,) float
        Centre of mass of the pattern relative to the frame centre, in frame
        pixels (differential phase contrast: the beam's deflection).
    """
    xp = get_xp(frames)
    n_y, n_x = frames.shape[-2:]
    photons = frames.sum(axis=(-2, -1))
    safe = xp.maximum(photons, 1e-12)
    ry = xp.arange(n_y, dtype=xp.float32) - n_y // 2
    rx = xp.arange(n_x, dtype=xp.float32) - n_x // 2
    dpc_y = (frames.sum(axis=-1) @ ry) / safe
    dpc_x = (frames.sum(axis=-2) @ rx) / safe
    return photons, dpc_y, dpc_x


@settings(frozen=True)
class ProbeSettings(Declared):
    """How the probe is estimated from the mean pattern."""

    level: float = setting(
        default=0.1, doc="Mean-pattern cut (fraction of its maximum) of the bright field.", min=0, max=1,
        exclusive=True,
    )  # fmt: skip
    support: float = setting(
        default=0.25,
        doc="Probe support radius, as a fraction of the frame.",
        min=0,
        max=0.5,
        exclusive="min",
    )


def probe_estimate(
    mean_pattern: Array,
    level: float = 0.1,
    support: float = 0.25,
    defocus_m: float = 0.0,
    wavelength_m: float | None = None,
    pixel_size_m: float | None = None,
) -> Array:
    """A first probe from the mean diffraction pattern.

    The inverse transform of √(mean pattern), with the pattern cut below
    *level* of its maximum, limited to a disc of radius ``support · n`` in
    real space, and scaled so that ``Σ|P|²`` equals the photons of a mean
    frame (the orthonormal propagator's convention). The bright field of the
    mean pattern is the image of the optic's pupil; without a phase its
    transform is the probe at focus. Given the sample's distance from the
    focus (*defocus_m*, with the wavelength and the real-space pixel size),
    the pupil gets the angular-spectrum phase ``exp(−iπλz|q|²)``, so the
    estimate is the defocused spot the sample sees.

    Parameters
    ----------
    mean_pattern : (n, n) float
        Mean of cleaned frames, DC at ``n//2``.

    Returns
    -------
    (n, n) complex64, centred
    """
    ProbeSettings(level, support)  # refuses values out of range
    if defocus_m and (wavelength_m is None or pixel_size_m is None):
        raise ValueError("probe_estimate: a defocus needs wavelength_m and pixel_size_m")
    xp = get_xp(mean_pattern)
    m = xp.asarray(mean_pattern, dtype=xp.float32)
    total = float(m.sum())
    if not total > 0:
        raise ValueError("probe_estimate: the mean pattern holds no photons")
    amp = xp.sqrt(xp.maximum(m, 0))
    pupil = ifftshift2(xp.where(m >= level * float(m.max()), amp, 0).astype(xp.complex64))
    n_y, n_x = m.shape
    if defocus_m:
        if wavelength_m is None or pixel_size_m is None:
            raise ValueError("probe_estimate: a defocus needs wavelength_m and pixel_size_m")
        qy = np.fft.fftfreq(n_y, d=pixel_size_m)[:, None]
        qx = np.fft.fftfreq(n_x, d=pixel_size_m)[None, :]
        phase = np.exp(-1j * np.pi * wavelength_m * defocus_m * (qx**2 + qy**2))
        pupil = pupil * xp.asarray(phase.astype(np.complex64))
    probe = fftshift2(ifft2(pupil))
    yy = xp.arange(n_y)[:, None] - n_y // 2
    xx = xp.arange(n_x)[None, :] - n_x // 2
    probe = probe * (yy**2 + xx**2 <= (support * min(n_y, n_x)) ** 2)
    power = float((xp.abs(probe) ** 2).sum())
    return (probe * np.sqrt(total / max(power, 1e-30))).astype(xp.complex64)
