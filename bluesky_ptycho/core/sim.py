"""Simulated ptychography: zone-plate probe, test object, scan patterns, raw FCCD frames.

The physics of the simulated FCCD device lives here, as plain functions and
one small class; the Ophyd device in :mod:`bluesky_ptycho.devices` is glue.
Random numbers come from a NumPy ``Generator`` the caller owns, so a seeded
simulation is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from . import fccd
from ._array import Array, fftshift2, get_xp, ifft2, ifftshift2
from .geometry import Beamstop, Geometry, ZonePlate
from .ptycho import ObjectGrid, far_field_intensity, object_grid

GOLDEN_ANGLE_DEG = 137.50776405003785


# ------------------------------------------------------------------ scan patterns
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


# ------------------------------------------------------------------ probe
def fzp_probe(geometry: Geometry, zone_plate: ZonePlate, xp: object = np) -> Array:
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


# ------------------------------------------------------------------ object
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


# ------------------------------------------------------------------ the sample
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
        raise ValueError(f"object_from_image: max_phase={max_phase} (>= 0 rad), "
                         f"min_amplitude={min_amplitude} (in (0, 1])")
    lo, hi = np.nanpercentile(img, [1, 99])
    t = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    t = np.clip(zoom(np.nan_to_num(t), (shape[0] / t.shape[0], shape[1] / t.shape[1]), order=1),
                0, 1)[: shape[0], : shape[1]]
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


# ------------------------------------------------------------------ the detector
@dataclass(frozen=True)
class FCCDDefects:
    """What a real FCCD adds to its frames, for the cleaning to remove.

    Attributes
    ----------
    ripple_adu : float
        Amplitude of each high-frequency pickup line, per channel, in ADU.
    ripple_cycles_per_sample : tuple of float
        Frequencies of the pickup lines along a channel's readout time
        (cycles per clocked sample). Each frame has its own phases; each
        channel its own amplitude (±20 %) and phase offset.
    column_offset_adu : float
        Standard deviation of a per-frame offset of each clocked column of
        each channel (row-clock pickup), in ADU.
    hot_fraction : float
        Fraction of pixels with extra dark noise, exponential with a scale
        drawn log-uniformly between 5 and 500 ADU per pixel.
    dead_fraction : float
        Fraction of pixels stuck at their offset: no noise, no signal.
    noisy_channel : int or None
        One ADC channel (0–191) whose read noise is ``noisy_channel_adu``.
    noisy_channel_adu : float
    dropped_packets_per_frame : float
        Mean number of lost packets per frame (Poisson); a lost packet zeroes
        ``packet_samples`` consecutive samples of the raw frame.
    packet_samples : int
    seed : int
        Seed of the static defects (which pixels are hot or dead).
    """

    ripple_adu: float = 3.0
    ripple_cycles_per_sample: tuple[float, ...] = (0.0731, 0.1937, 0.3119)
    column_offset_adu: float = 1.5
    hot_fraction: float = 5e-4
    dead_fraction: float = 2e-4
    noisy_channel: int | None = 77
    noisy_channel_adu: float = 25.0
    dropped_packets_per_frame: float = 0.02
    packet_samples: int = 4096
    seed: int = 11


@dataclass
class RawTruth:
    """What went into one simulated raw frame (for tests that measure residuals).

    Attributes
    ----------
    offsets : (192, 970) float32
        Per-channel offset at every readout row (static part + this frame's drift).
    column_offsets : (192, 12) float32
        This frame's per-column offsets.
    ripple : (1152, 1940) float32
        The pickup added to every raw sample.
    photons : (1920, 960) float32 or None
        Photons detected per image pixel (after the beamstop, before gain).
    dropped : (1152, 1940) bool
        Samples lost with a dropped packet (0 in the raw frame).
    """

    offsets: np.ndarray
    column_offsets: np.ndarray
    ripple: np.ndarray
    photons: np.ndarray | None
    dropped: np.ndarray


@dataclass
class FCCDNoiseModel:
    """How the FCCD turns photons into raw ADU.

    Attributes
    ----------
    adu_per_photon : float
        Gain; about ``E_eV / (3.65 eV/e⁻ × 6 e⁻/ADU)``, 36.5 at 800 eV.
    baseline_adu : float
        Mean channel offset (the 13-bit ADC's baseline, 0x1000).
    offset_spread_adu : float
        Standard deviation of the static per-channel offsets.
    drift_adu : float
        Amplitude of the slow offset drift over readout time (per channel,
        quadratic in readout row), different in every frame.
    read_noise_adu : float
        Gaussian read noise per sample.
    full_scale_adu : float
        Largest value a sample can take (saturation).
    defects : FCCDDefects or None
        Planted defects (None: an ideal camera with offsets and noise only).
    beamstop : Beamstop
        Semi-transparent beamstop in front of the detector (none by default).
    seed : int
        Seed of the static per-channel offsets (the camera's fingerprint).
    """

    adu_per_photon: float = 36.5
    baseline_adu: float = 4096.0
    offset_spread_adu: float = 150.0
    drift_adu: float = 6.0
    read_noise_adu: float = 5.0
    full_scale_adu: float = 65535.0
    defects: FCCDDefects | None = None
    beamstop: Beamstop = field(default_factory=Beamstop)
    seed: int = 7

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        rows = np.arange(fccd.CLOCKED_ROWS)
        static = self.baseline_adu + self.offset_spread_adu * rng.standard_normal(fccd.N_CHANNELS)
        # a fixed per-channel ramp over readout time, the same in every frame (darks remove it)
        slope = rng.uniform(-5, 5, fccd.N_CHANNELS)
        self.static_offsets = (
            static[:, None] + slope[:, None] * rows[None, :] / fccd.CLOCKED_ROWS
        ).astype(np.float32)
        self._static_defects()

    def _static_defects(self) -> None:
        d = self.defects
        n = fccd.RAW_SHAPE[0] * fccd.RAW_SHAPE[1]
        self.hot_index = self.dead_index = np.zeros(0, np.int64)
        self.hot_scale = np.zeros(0, np.float32)
        self.read_noise_map: np.ndarray | None = None
        if d is None:
            return
        rng = np.random.default_rng(d.seed)
        # only pixel samples (not overscan) can be hot or dead
        pixel = np.zeros(fccd.RAW_SHAPE, bool)
        fccd.raw_blocks(pixel)[:, : fccd.PIXEL_COLUMNS, :, : fccd.PIXEL_ROWS] = True
        candidates = np.flatnonzero(pixel)
        picked = rng.choice(
            candidates, round((d.hot_fraction + d.dead_fraction) * n), replace=False
        )
        n_hot = round(d.hot_fraction * n)
        self.hot_index, self.dead_index = np.sort(picked[:n_hot]), np.sort(picked[n_hot:])
        # a dead pixel is stuck at its channel's static offset: no noise, no light
        static = np.empty(fccd.RAW_SHAPE, np.float32)
        fccd.raw_blocks(static)[...] = fccd.per_channel_to_raw(self.static_offsets)
        self.dead_value = static.reshape(-1)[self.dead_index]
        self.hot_scale = np.exp(rng.uniform(np.log(5), np.log(500), n_hot)).astype(np.float32)
        if d.noisy_channel is not None:
            if not 0 <= d.noisy_channel < fccd.N_CHANNELS:
                raise ValueError(
                    f"FCCDDefects.noisy_channel={d.noisy_channel} must be a channel 0–191 or None"
                )
            per_channel = np.full((fccd.N_CHANNELS, fccd.CLOCKED_ROWS), self.read_noise_adu)
            per_channel[d.noisy_channel] = d.noisy_channel_adu
            m = np.empty(fccd.RAW_SHAPE, np.float32)
            fccd.raw_blocks(m)[...] = fccd.per_channel_to_raw(per_channel.astype(np.float32))
            self.read_noise_map = m
        self._ripple_gain = rng.uniform(0.8, 1.2, (fccd.N_CHANNELS, len(d.ripple_cycles_per_sample)))
        self._ripple_phase = rng.uniform(0, 2 * np.pi, self._ripple_gain.shape)
        # readout time of each sample, in clocked samples: row * 12 + column
        t = np.arange(fccd.CLOCKED_ROWS)[None, :] * fccd.CLOCKED_COLUMNS + np.arange(
            fccd.CLOCKED_COLUMNS
        )[:, None]
        f = np.asarray(d.ripple_cycles_per_sample, np.float64)
        self._ripple_basis = np.exp(2j * np.pi * f[:, None] * t.reshape(1, -1))  # (k, 12·970)

    @classmethod
    def for_energy(cls, energy_ev: float, **kw: Any) -> FCCDNoiseModel:
        """Noise model with the gain at *energy_ev* (6 e⁻/ADU, 3.65 eV per e⁻)."""
        return cls(adu_per_photon=energy_ev / (3.65 * 6.0), **kw)

    def frame_offsets(self, rng: np.random.Generator) -> np.ndarray:
        """This frame's offsets (192, 970) float32: static part plus a drift that changes per frame."""
        t = np.linspace(-1, 1, fccd.CLOCKED_ROWS, dtype=np.float32)
        coef = rng.normal(0, self.drift_adu, (fccd.N_CHANNELS, 3)).astype(np.float32)
        drift = coef[:, :1] + coef[:, 1:2] * t + coef[:, 2:3] * (t**2 - 1 / 3)
        return self.static_offsets + drift

    def ripple(self, rng: np.random.Generator) -> np.ndarray:
        """This frame's pickup ripple on every raw sample, (1152, 1940) float32."""
        d = self.defects
        out = np.zeros(fccd.RAW_SHAPE, np.float32)
        if d is None or not d.ripple_adu:
            return out
        frame_phase = rng.uniform(0, 2 * np.pi, len(d.ripple_cycles_per_sample))
        amp = d.ripple_adu * self._ripple_gain * np.exp(1j * (frame_phase + self._ripple_phase))
        wave = (amp @ self._ripple_basis).real.reshape(
            fccd.N_CHANNELS, fccd.CLOCKED_COLUMNS, fccd.CLOCKED_ROWS
        )
        # (192 = half·96 + local, 12, 970) → raw blocks (local, 12, half, 970)
        blocks = fccd.raw_blocks(out)
        w = wave.reshape(fccd.N_HALVES, fccd.CHANNELS_PER_HALF, fccd.CLOCKED_COLUMNS, -1)
        blocks[...] = np.moveaxis(w, 0, 2)
        return out

    def simulate(
        self,
        rng: np.random.Generator,
        pattern: np.ndarray | None = None,
        center: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, RawTruth]:
        """One raw FCCD frame and what went into it.

        Parameters
        ----------
        rng : numpy Generator
        pattern : (h, w) float, optional
            Expected photons per pixel before the beamstop (Poisson noise is
            drawn here). None makes a dark frame.
        center : (row, col), optional
            Image pixel of the pattern's centre (DC); default the detector
            centre, on the boundary of the two halves.

        Returns
        -------
        raw : (1152, 1940) uint16
        truth : RawTruth
        """
        d = self.defects
        noise = self.read_noise_map if self.read_noise_map is not None else self.read_noise_adu
        raw = rng.standard_normal(fccd.RAW_SHAPE, dtype=np.float32)
        raw *= noise
        blocks = fccd.raw_blocks(raw)
        offsets = self.frame_offsets(rng)
        blocks += fccd.per_channel_to_raw(offsets)
        col_off = np.zeros((fccd.N_CHANNELS, fccd.CLOCKED_COLUMNS), np.float32)
        if d is not None and d.column_offset_adu:
            col_off = rng.normal(0, d.column_offset_adu, col_off.shape).astype(np.float32)
            c = col_off.reshape(fccd.N_HALVES, fccd.CHANNELS_PER_HALF, fccd.CLOCKED_COLUMNS)
            blocks += np.moveaxis(c, 0, 2)[..., None]  # (local, 12, half, 1)
        ripple = self.ripple(rng)
        raw += ripple
        flat = raw.reshape(-1)
        if len(self.hot_index):
            flat[self.hot_index] += rng.exponential(self.hot_scale).astype(np.float32)
        photons = None
        if pattern is not None:
            image = np.zeros(fccd.IMAGE_SHAPE, dtype=np.float32)
            h, w = pattern.shape
            cy, cx = (
                center
                if center is not None
                else (fccd.IMAGE_SHAPE[0] // 2, fccd.IMAGE_SHAPE[1] // 2)
            )
            y0, x0 = cy - h // 2, cx - w // 2
            if y0 < 0 or x0 < 0 or y0 + h > fccd.IMAGE_SHAPE[0] or x0 + w > fccd.IMAGE_SHAPE[1]:
                raise ValueError(
                    f"pattern of shape {pattern.shape} centred at {(cy, cx)} does not fit on the "
                    f"FCCD image {fccd.IMAGE_SHAPE}"
                )
            expected = np.maximum(pattern, 0) * self.beamstop.transmission_map((h, w), (y0, x0))
            image[y0 : y0 + h, x0 : x0 + w] = rng.poisson(expected)
            photons = image
            raw += fccd.image_to_raw(image * np.float32(self.adu_per_photon))
        if len(self.dead_index):
            flat[self.dead_index] = self.dead_value
        np.clip(raw, 0, self.full_scale_adu, out=raw)
        out = raw.astype(np.uint16)
        dropped = np.zeros(fccd.RAW_SHAPE, bool)
        if d is not None and d.dropped_packets_per_frame:
            for _ in range(rng.poisson(d.dropped_packets_per_frame)):
                s = int(rng.integers(0, out.size - d.packet_samples))
                dropped.reshape(-1)[s : s + d.packet_samples] = True
            out[dropped] = 0
        return out, RawTruth(offsets, col_off, ripple, photons, dropped)

    def raw_frame(
        self,
        rng: np.random.Generator,
        pattern: np.ndarray | None = None,
        center: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """One raw FCCD frame ``(1152, 1940)`` uint16 (see :meth:`simulate`)."""
        return self.simulate(rng, pattern, center)[0]


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


# ------------------------------------------------------------------ a whole scan at frame size
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
    from .solvers import orthogonalize_modes

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
    true = reported + rng.normal(0, position_error_px, reported.shape) if position_error_px else reported
    clean = far_field_intensity(obj, probe, true)
    return SimulatedScan(
        geometry=g,
        grid=grid,
        positions_m=positions,
        true_positions_px=true,
        object=obj,
        probe=probe,
        intensities=rng.poisson(clean).astype(np.float32),
    )
