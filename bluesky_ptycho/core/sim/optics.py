"""The Fresnel zone-plate probe at the sample plane."""

from __future__ import annotations

from typing import Any

import numpy as np

from bluesky_ptycho.core.arrays import Array, fftshift2, get_xp, ifft2
from bluesky_ptycho.core.geometry import Geometry, ZonePlate


def fzp_probe(geometry: Geometry, zone_plate: ZonePlate, xp: Any = np) -> Array:
    """Probe of a Fresnel zone plate at the sample plane, on the frame grid.

    The zone plate focuses with ``f = D·Δr/λ``; at the focus the field is the
    Fourier transform of its pupil (aperture ``D`` less the central stop), and
    the sample ``defocus_m`` from the focus sees it propagated by the
    angular spectrum ``exp(−iπλz|q|²)``.

    Returns
    -------
    (H, W) complex64
        Centred in the frame, normalised to ``Σ|P|² = 1``.
    """
    n = geometry.frame_px
    dx = geometry.object_pixel_size_m
    lam = geometry.wavelength_m
    f = zone_plate.focal_length_m(geometry.energy_ev)
    q = np.fft.fftfreq(n, d=dx)  # spatial frequency, 1/m
    qy, qx = np.meshgrid(q, q, indexing="ij")
    q2 = qx**2 + qy**2
    u = lam * f * np.sqrt(q2)  # radius in the zone-plate plane, m
    du = lam * f / (n * dx)
    # area-weighted edges (soft by one pupil sample) against aliasing
    outer = np.clip((zone_plate.diameter_m / 2 - u) / du + 0.5, 0, 1)
    inner = np.clip((u - zone_plate.central_stop_m / 2) / du + 0.5, 0, 1)
    pupil = outer * inner
    if not pupil.any():
        raise ValueError(
            f"zone plate of diameter {zone_plate.diameter_m} m is smaller than one pupil "
            f"sample ({du:.3g} m) on this grid: raise frame_px or the pixel size"
        )
    field = pupil * np.exp(-1j * np.pi * lam * zone_plate.defocus_m * q2)
    probe = fftshift2(ifft2(field.astype(np.complex64)))
    probe /= np.sqrt(np.sum(np.abs(probe) ** 2))
    return get_xp(xp).asarray(probe.astype(np.complex64)) if xp is not np else probe
