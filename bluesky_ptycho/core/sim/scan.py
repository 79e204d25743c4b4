"""Scan patterns and whole simulated scans (far-field frames at the scan's positions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bluesky_ptycho.core.arrays import Array, fftshift2, get_xp, ifftshift2
from bluesky_ptycho.core.geometry import Geometry, ZonePlate
from bluesky_ptycho.core.ptycho import ObjectGrid, far_field_intensity, object_grid
from bluesky_ptycho.core.sim.optics import fzp_probe
from bluesky_ptycho.core.sim.sample import object_from_image, test_object

GOLDEN_ANGLE_DEG = 137.50776405003785


def raster_positions(nx: int, ny: int, step_m: float) -> np.ndarray:
    """Raster scan, row by row, centred on 0.

    Returns
    -------
    (nx·ny, 2) float64
        (x, y) in m.
    """
    if nx < 1 or ny < 1:
        raise ValueError(f"raster needs nx >= 1 and ny >= 1 points, got nx={nx}, ny={ny}")
    if not step_m > 0:
        raise ValueError(f"raster step_m={step_m!r} must be positive (m)")
    x = (np.arange(nx) - (nx - 1) / 2) * step_m
    y = (np.arange(ny) - (ny - 1) / 2) * step_m
    xx, yy = np.meshgrid(x, y)
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def fermat_positions(n: int, step_m: float) -> np.ndarray:
    """Fermat spiral ``r = c·√k``, ``θ = k·137.508°``, centred on 0.

    The mean distance between neighbours is about ``step_m``; ``c = step_m/√π``.

    Returns
    -------
    (n, 2) float64
        (x, y) in m.
    """
    if n < 1:
        raise ValueError(f"fermat spiral needs n >= 1 points, got n={n}")
    if not step_m > 0:
        raise ValueError(f"fermat step_m={step_m!r} must be positive (m)")
    k = np.arange(n)
    c = step_m / np.sqrt(np.pi)
    r = c * np.sqrt(k)
    theta = np.deg2rad(k * GOLDEN_ANGLE_DEG)
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def scan_positions(pattern: str, num_points: int, step_m: float) -> np.ndarray:
    """Positions for a named pattern: ``"raster"`` (square-ish) or ``"fermat"``."""
    if pattern == "fermat":
        return fermat_positions(num_points, step_m)
    if pattern == "raster":
        nx = int(np.ceil(np.sqrt(num_points)))
        ny = int(np.ceil(num_points / nx))
        return raster_positions(nx, ny, step_m)[:num_points]
    raise ValueError(f"scan pattern={pattern!r} is not known: use 'raster' or 'fermat'")


def downsample_to_frame(intensity: Array, factor: int) -> Array:
    """The ``frame_px`` pattern the reconstruction models, from one oversampled by *factor*.

    Takes every *factor*-th sample (DC at the centre kept) and scales by
    ``factor²`` so that the photon total is kept, as Fourier downsampling
    keeps it. Used to check the simulator against the solver without a
    detector in between.
    """
    xp = get_xp(intensity)
    f = ifftshift2(intensity)[..., ::factor, ::factor] * (factor * factor)
    return xp.ascontiguousarray(fftshift2(f))


@dataclass
class SimulatedScan:
    """A scan simulated directly at the frame size: the solvers' test bench.

    Attributes
    ----------
    geometry : Geometry
    grid : ObjectGrid
        The object grid of the scan (16 px margin).
    positions_m : (N, 2) float64
        Stage positions (x, y) in m, as the scan reports them.
    true_positions_px : (N, 2) float64
        Where the views really were, (row, column) corners on *grid*
        (differs from the reported ones by ``position_error_px``).
    object : (Y, X) complex64
        The true object on *grid*.
    probe : (M, H, W) complex64
        The true probe modes, orthogonal, scaled to the photon count.
    intensities : (N, H, W) float32
        Poisson-noisy counts, DC at the centre.
    """

    geometry: Geometry
    grid: ObjectGrid
    positions_m: np.ndarray
    true_positions_px: np.ndarray
    object: np.ndarray
    probe: np.ndarray
    intensities: np.ndarray

    @property
    def positions_px(self) -> np.ndarray:
        """The reported positions as view corners on :attr:`grid`."""
        return self.grid.to_pixels(self.positions_m)


def simulate_scan(
    n_side: int = 16,
    step_m: float = 100e-9,
    frame_px: int = 64,
    photons: float = 1e6,
    modes: int = 1,
    mode_power: float = 0.3,
    position_error_px: float = 0.0,
    jitter: float = 0.1,
    seed: int = 0,
    image: np.ndarray | None = None,
) -> SimulatedScan:
    """A raster scan of the test object, Poisson noise, optional probe modes and position errors.

    Parameters
    ----------
    n_side : int
        Points per side of the raster (``n_side²`` frames).
    step_m : float
        Raster step in m; each point moves by up to ``jitter`` steps at random
        (a perfect raster has its own ambiguities).
    frame_px : int
        Frame side; the geometry is the default's with ``crop_px = 4·frame_px``
        (the object pixel is ``λz / (crop_px · pixel)``).
    photons : float
        Photons per frame (before the object absorbs some).
    modes : int
        Probe modes; the second is the zone-plate probe displaced by 3 px
        (a partially coherent source), orthogonalised, with *mode_power* of
        the power; further modes follow with half as much each.
    position_error_px : float
        RMS error (px) of the reported positions against the true ones.
    seed : int
    image : (y, x) array, optional
        A picture the sample is made from (:func:`object_from_image`)
        instead of the test object.
    """
    from bluesky_ptycho.core.solvers import orthogonalize_modes

    rng = np.random.default_rng(seed)
    g = Geometry(frame_px=frame_px, crop_px=4 * frame_px)
    base = raster_positions(n_side, n_side, step_m)
    positions = base + rng.uniform(-jitter, jitter, base.shape) * step_m
    grid = object_grid(positions, g.object_pixel_size_m, frame_px, margin_px=16)
    obj = test_object(grid.shape, rng) if image is None else object_from_image(image, grid.shape)
    p0 = fzp_probe(g, ZonePlate())
    probes = [p0]
    for k in range(1, modes):
        probes.append(np.roll(p0, (3 * k, 2 * k), axis=(0, 1)))
    probe = orthogonalize_modes(np.stack(probes).astype(np.complex64))
    if modes > 1:
        power = np.array([1.0] + [mode_power * 0.5 ** (k - 1) for k in range(1, modes)])
        power = power / power.sum()
        norms = np.sqrt(np.sum(np.abs(probe) ** 2, axis=(1, 2)))
        probe = probe / norms[:, None, None] * np.sqrt(power)[:, None, None]
    probe = (probe * np.sqrt(photons / np.sum(np.abs(probe) ** 2))).astype(np.complex64)
    reported = grid.to_pixels(positions)
    true = (
        reported + rng.normal(0, position_error_px, reported.shape)
        if position_error_px
        else reported
    )
    clean: np.ndarray = far_field_intensity(obj, probe, true)  # (the simulation runs on NumPy)
    return SimulatedScan(
        geometry=g,
        grid=grid,
        positions_m=positions,
        true_positions_px=true,
        object=obj,
        probe=probe,
        intensities=rng.poisson(clean).astype(np.float32),
    )
