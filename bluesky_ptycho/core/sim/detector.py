"""The FCCD's raw frames: photons, gain, offsets, read noise and the defects a real camera has."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bluesky_ptycho.core import fccd
from bluesky_ptycho.core.geometry import Beamstop


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
        self._ripple_gain = rng.uniform(
            0.8, 1.2, (fccd.N_CHANNELS, len(d.ripple_cycles_per_sample))
        )
        self._ripple_phase = rng.uniform(0, 2 * np.pi, self._ripple_gain.shape)
        # readout time of each sample, in clocked samples: row * 12 + column
        t = (
            np.arange(fccd.CLOCKED_ROWS)[None, :] * fccd.CLOCKED_COLUMNS
            + np.arange(fccd.CLOCKED_COLUMNS)[:, None]
        )
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
