"""Test objects: independent amplitude and phase features, or an object made from an image."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from bluesky_ptycho.core.geometry import Geometry, ZonePlate
from bluesky_ptycho.core.ptycho import ObjectGrid, far_field_intensity, object_grid
from bluesky_ptycho.core.sim.optics import fzp_probe


def test_object(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A test sample with independent amplitude and phase structure.

    Amplitude: a 36-spoke Siemens star (features down to one pixel at its
    centre) in a field of absorbing particles. Phase: overlapping smooth
    cells, sharp-edged bars of widths 1–8 px and fine noise-like texture,
    spanning about ±1 rad. Neither part is a pattern any solver finds by
    accident, and they do not share edges, so cross-talk between amplitude and
    phase shows up as error.

    Returns
    -------
    (Y, X) complex64
        Transmission, amplitude in about [0.55, 1].
    """
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    cy, cx = ny / 2, nx / 2
    # Siemens star, amplitude
    r = np.hypot(yy - cy, xx - cx)
    theta = np.arctan2(yy - cy, xx - cx)
    star_r = 0.3 * min(ny, nx)
    star = (np.sin(18 * theta) > 0) & (r < star_r)
    absorb = 0.3 * star
    # absorbing particles, amplitude
    n_particles = max(8, (ny * nx) // 900)
    py = rng.uniform(0, ny, n_particles)
    px = rng.uniform(0, nx, n_particles)
    pr = rng.uniform(2, 7, n_particles)
    particles = np.zeros(shape)
    for y0, x0, r0 in zip(py, px, pr, strict=True):
        particles = np.maximum(particles, np.clip(r0 + 0.5 - np.hypot(yy - y0, xx - x0), 0, 1))
    absorb = np.maximum(absorb, 0.45 * particles)
    amplitude = 1.0 - absorb
    # phase: smooth cells, bars, texture
    cells = np.zeros(shape)
    for _ in range(max(6, (ny * nx) // 4000)):
        y0, x0 = rng.uniform(0, ny), rng.uniform(0, nx)
        s = rng.uniform(6, 20)
        cells += rng.uniform(-0.6, 0.6) * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * s**2))
    bars = np.zeros(shape)
    x = int(0.36 * nx)
    for width in (1, 2, 3, 4, 6, 8):
        y_lo, y_hi = int(0.56 * ny), int(0.68 * ny)
        bars[y_lo:y_hi, x : x + width] = 0.8
        x += 2 * width + 3
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    texture *= 0.25 / max(texture.std(), 1e-12)
    phase = np.clip(cells + bars + texture - 0.3 * star, -1.2, 1.2)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def object_from_image(
    image: np.ndarray, shape: tuple[int, int], max_phase: float = 1.0, min_amplitude: float = 0.6
) -> np.ndarray:
    """A sample from a picture (an SEM image, say): bright is thick.

    The image (any 2-D or RGB(A) array) is brought to [0, 1] between its 1st
    and 99th percentiles, resized to *shape*, and made a transmission with
    phase ``−max_phase · t`` and amplitude from 1 down to *min_amplitude*.

    Returns
    -------
    (Y, X) complex64
    """
    from scipy.ndimage import zoom

    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].mean(axis=-1)
    if img.ndim != 2 or min(img.shape) < 2:
        raise ValueError(f"object_from_image: an image of shape {img.shape} is not a 2-D picture")
    if not (max_phase >= 0 and 0 < min_amplitude <= 1):
        raise ValueError(
            f"object_from_image: max_phase={max_phase} (>= 0 rad), "
            f"min_amplitude={min_amplitude} (in (0, 1])"
        )
    lo, hi = np.nanpercentile(img, [1, 99])
    t = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    t = np.clip(
        zoom(np.nan_to_num(t), (shape[0] / t.shape[0], shape[1] / t.shape[1]), order=1), 0, 1
    )[: shape[0], : shape[1]]
    t = np.pad(t, ((0, shape[0] - t.shape[0]), (0, shape[1] - t.shape[1])), mode="edge")
    amp = 1 - (1 - min_amplitude) * t
    return (amp * np.exp(-1j * max_phase * t)).astype(np.complex64)


@dataclass
class SimulatedSample:
    """A known object under a known probe: the truth a simulated detector images.

    Parameters
    ----------
    geometry : Geometry
    zone_plate : ZonePlate
    scan_extent_m : float
        Side of the square region (m, centred on 0) the stage can reach;
        the object covers it with a frame to spare.
    seed : int
        Seed of the object's random features.
    """

    geometry: Geometry = field(default_factory=Geometry)
    zone_plate: ZonePlate = field(default_factory=ZonePlate)
    scan_extent_m: float = 3e-6
    seed: int = 1

    def __post_init__(self) -> None:
        g = self.geometry
        half = self.scan_extent_m / 2
        corners = np.array([[-half, -half], [half, half]])
        self.grid: ObjectGrid = object_grid(corners, g.object_pixel_size_m, g.frame_px, margin_px=2)
        self.object = test_object(self.grid.shape, np.random.default_rng(self.seed))
        self.probe = fzp_probe(g, self.zone_plate)

    def object_on(self, grid: ObjectGrid) -> np.ndarray:
        """The true object on another grid of the same pixel size (a reconstruction's).

        Both grids' origins are whole multiples of the pixel size (see
        :func:`object_grid`), so this is a crop; pixels outside the simulated
        sample are 1 (empty).
        """
        if not np.isclose(grid.pixel_size_m, self.grid.pixel_size_m, rtol=1e-9):
            raise ValueError(
                f"grid pixel {grid.pixel_size_m} m differs from the sample's {self.grid.pixel_size_m} m"
            )
        dx = self.grid.pixel_size_m
        oy = round((grid.origin_m[1] - self.grid.origin_m[1]) / dx)
        ox = round((grid.origin_m[0] - self.grid.origin_m[0]) / dx)
        out = np.ones(grid.shape, dtype=np.complex64)
        ys, xs = (
            slice(max(oy, 0), min(oy + grid.shape[0], self.grid.shape[0])),
            slice(max(ox, 0), min(ox + grid.shape[1], self.grid.shape[1])),
        )
        out[ys.start - oy : ys.stop - oy, xs.start - ox : xs.stop - ox] = self.object[ys, xs]
        return out

    def intensity(self, position_m: tuple[float, float], photons: float) -> np.ndarray:
        """Noise-free detector intensity at a stage position (x, y) in m.

        Returns
        -------
        (crop_px, crop_px) float32
            Expected photons per detector pixel, DC at the centre, summing to
            about *photons* (the object absorbs some).
        """
        g = self.geometry
        pos = self.grid.to_pixels(np.asarray([position_m], dtype=np.float64))
        h = g.frame_px
        if (
            (pos < 0).any()
            or (pos[:, 0] > self.grid.shape[0] - h - 1)
            or (pos[:, 1] > self.grid.shape[1] - h - 1)
        ):
            raise ValueError(
                f"stage position {position_m} m lies outside the simulated sample "
                f"(±{self.scan_extent_m / 2:.3g} m)"
            )
        probe = self.probe * np.float32(np.sqrt(photons))
        return far_field_intensity(self.object, probe, pos, upsample=g.downsample)[0]
