"""The cleaning steps against the simulated truth."""

import numpy as np
import pytest

from bluesky_ptycho.core import clean, fccd, sim
from bluesky_ptycho.core.dark import RunningDarkStats
from bluesky_ptycho.core.geometry import Geometry, ZonePlate


@pytest.fixture(scope="module")
def scene():
    g = Geometry()
    rng = np.random.default_rng(0)
    noise = sim.FCCDNoiseModel.for_energy(g.energy_ev)
    stats = RunningDarkStats(fccd.RAW_SHAPE, np)
    for _ in range(10):
        stats.update(noise.raw_frame(rng))
    sample = sim.SimulatedSample(g, ZonePlate(), scan_extent_m=2e-6)
    pattern = sample.intensity((0.1e-6, -0.2e-6), 1e6)
    return g, rng, noise, stats.result(), pattern


def test_overscan_fit_removes_the_frame_offset_drift(scene):
    _g, rng, noise, _, _ = scene
    # an exact dark: the static offsets, so what is left is this frame's drift
    dark_mean = np.zeros(fccd.RAW_SHAPE, np.float32)
    fccd.raw_blocks(dark_mean)[...] += fccd.per_channel_to_raw(noise.static_offsets)
    offsets = noise.frame_offsets(rng)
    raw = rng.standard_normal(fccd.RAW_SHAPE, dtype=np.float32) * noise.read_noise_adu
    fccd.raw_blocks(raw)[...] += fccd.per_channel_to_raw(offsets)
    drift = offsets - noise.static_offsets
    fit = clean.overscan_fit(clean.subtract_dark(raw[None], dark_mean))[0]
    before = float(np.sqrt((drift**2).mean()))
    after = float(np.sqrt(((fit - drift) ** 2).mean()))
    # Measured (seeds 0-2): drift 6.7-7.3 ADU rms before, 0.27-0.29 ADU rms left
    # (3 coefficients fitted to 2 × 790 samples of 5 ADU read noise, 0.22 inside
    # the fitted rows, more where the fit extrapolates over the skipped rows).
    assert before > 4
    assert after < 0.35


def test_clean_frames_recover_the_pattern(scene):
    g, rng, noise, dark, pattern = scene
    raws = np.stack([noise.raw_frame(rng, pattern) for _ in range(4)])
    settings = clean.CleanSettings(adu_per_photon=noise.adu_per_photon)
    frames, center = clean.clean_frames(raws, dark.mean, dark.bad, None, settings)
    assert frames.shape == (4, g.frame_px, g.frame_px) and frames.dtype == np.float32
    assert frames.min() >= 0
    # DC sits at the detector centre (960, 480); the centre of mass of one
    # asymmetric pattern is within 2 px of it (measured 1.7 px)
    assert abs(center[0] - 960) < 3 and abs(center[1] - 480) < 3
    # photons are kept: measured +0.8 % (read-noise spikes above the threshold)
    total = float(pattern.sum())
    assert abs(frames.sum((1, 2)).mean() / total - 1) < 0.03
    # a dark frame cleans to almost nothing: measured 425 photons, 0.06 % of a frame
    dark_frames, _ = clean.clean_frames(
        noise.raw_frame(rng)[None], dark.mean, dark.bad, center, settings
    )
    assert float(dark_frames.sum()) < 1e-3 * total


def test_fourier_downsample_keeps_photons_and_centre(xp):
    img = np.zeros((1, 64, 64), np.float32)
    img[0, 30:34, 30:34] = 10
    out = clean.fourier_downsample(xp.asarray(img), 16)
    out = out.get() if hasattr(out, "get") else out
    assert out.shape == (1, 16, 16)
    assert abs(out.sum() - img.sum()) < 1e-3 * img.sum()
    assert np.unravel_index(out[0].argmax(), (16, 16)) == (8, 8)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="overscan_order=3"):
        clean.CleanSettings(overscan_order=3)
    with pytest.raises(ValueError, match="crop_px=500"):
        clean.CleanSettings(crop_px=500)
