"""The nine cleaning steps, each against the simulated truth of the defect it removes.

Every threshold below is a measured value with a margin; the comment next to
it gives the measurement (seed 0 unless stated).
"""

import numpy as np
import pytest

from bluesky_ptycho.core import clean, fccd, sim
from bluesky_ptycho.core.dark import DarkSettings, RunningDarkStats
from bluesky_ptycho.core.geometry import Beamstop, Geometry, ZonePlate

CENTER = (972, 466)  # the direct beam, off the detector centre (960, 480)
BEAMSTOP = Beamstop((975.0, 463.0), 40.0, 0.05)


@pytest.fixture(scope="module")
def scene():
    g = Geometry()
    rng = np.random.default_rng(0)
    noise = sim.FCCDNoiseModel.for_energy(g.energy_ev, defects=sim.FCCDDefects(), beamstop=BEAMSTOP)
    stats = RunningDarkStats(fccd.RAW_SHAPE, np)
    dark_ripple = np.zeros(fccd.RAW_SHAPE, np.float64)
    for _ in range(25):
        raw, truth = noise.simulate(rng)
        stats.update(raw)
        dark_ripple += truth.ripple / 25
    sample = sim.SimulatedSample(g, ZonePlate(), scan_extent_m=2e-6)
    pattern = sample.intensity((0.1e-6, -0.2e-6), 1e6)
    raws, truths = zip(*(noise.simulate(rng, pattern, CENTER) for _ in range(8)), strict=True)
    settings = clean.CleanSettings(adu_per_photon=noise.adu_per_photon, beamstop=BEAMSTOP)
    return {
        "g": g,
        "rng": rng,
        "noise": noise,
        "dark": stats.result(),
        "pattern": pattern,
        "raws": np.stack(raws),
        "truths": truths,
        "settings": settings,
        "dark_ripple": dark_ripple.astype(np.float32),
    }


@pytest.fixture(scope="module")
def cleaned(scene):
    pre = clean.Preprocessor(scene["dark"], scene["settings"], np)
    return pre, pre(scene["raws"])


def _ideal(scene, center, size=512, out=128):
    """What a perfect detector gives: the true photons, beamstop undone, cropped, downsampled."""
    photons = np.stack([t.photons for t in scene["truths"]])
    photons = photons / BEAMSTOP.transmission_map(fccd.IMAGE_SHAPE)
    return clean.fourier_downsample(clean.crop_center(photons, center, size), out)


# ------------------------------------------------------------------ step 2: darks and masks
def test_dark_masks_hot_and_dead_pixels_and_the_noisy_channel(scene):
    dark, noise = scene["dark"], scene["noise"]
    bad = dark.bad.reshape(-1)
    hot_masked = bad[noise.hot_index]
    # every dead pixel (std 0) is masked
    assert bad[noise.dead_index].all()
    # hot pixels: extra exponential noise of scale 5–500 ADU (log-uniform); those above the
    # 30 ADU threshold are masked: measured 60 % of all hot pixels (ln(500/30)/ln(100) = 61 %
    # expected), and all of those with a scale above 60 ADU (25 darks measure the std to ±15 %)
    assert 0.5 < hot_masked.mean() < 0.7
    assert hot_masked[noise.hot_scale > 60].all()
    # no ordinary pixel outside the noisy channel is masked (measured 0)
    ordinary = np.ones(bad.size, bool)
    ordinary[noise.hot_index] = ordinary[noise.dead_index] = False
    chan = np.zeros(fccd.RAW_SHAPE, bool)
    fccd.raw_blocks(chan)[...] = fccd.per_channel_to_raw(
        np.broadcast_to((np.arange(192) == 77)[:, None], (192, 970))
    )
    ordinary &= ~chan.reshape(-1)
    assert bad[ordinary].sum() == 0
    # the one noisy ADC channel (25 ADU against 5) and no other
    assert np.flatnonzero(dark.bad_channels).tolist() == [77]
    # a pixel's dark std holds the read noise (5), the per-frame offset drift (6), ripple (3.7)
    # and column offsets (1.5): measured median channel 9.4 ADU, the noisy one 26
    assert 8 < float(np.median(dark.channel_std)) < 11
    assert dark.channel_std[77] > np.median(dark.channel_std) + 15


def test_dark_statistics_refuse_bad_settings():
    with pytest.raises(ValueError, match="max_std_adu=0"):
        DarkSettings(max_std_adu=0)


# ------------------------------------------------------------------ step 3: overscan
def test_overscan_fit_removes_the_offset_drift_even_with_lost_samples():
    rng = np.random.default_rng(1)
    noise = sim.FCCDNoiseModel()
    offsets = noise.frame_offsets(rng)
    drift = offsets - noise.static_offsets
    raw = rng.standard_normal(fccd.RAW_SHAPE, dtype=np.float32) * noise.read_noise_adu
    fccd.raw_blocks(raw)[...] += fccd.per_channel_to_raw(drift)
    region = fccd.RawRegion.full()
    ov = region.overscan(raw[None])
    before = float(np.sqrt((drift**2).mean()))
    fit = clean.overscan_fit(ov)[0].reshape(192, 970)
    after = float(np.sqrt(((fit - drift) ** 2).mean()))
    # a packet lost in the overscan of some channels: those samples get zero weight
    valid = np.ones(ov.shape, bool)
    valid[0, 0, 10:14, 300:500] = False
    ov_lost = np.where(valid, ov, -4096.0)  # a lost sample reads 0, i.e. −offset after the dark
    fit_lost = clean.overscan_fit(ov_lost, valid=valid)[0].reshape(192, 970)
    after_lost = float(np.sqrt(((fit_lost - drift) ** 2).mean()))
    # measured: 6.9 ADU rms drift before; 0.27 ADU left (3 coefficients fitted to 2 × 790
    # samples of 5 ADU noise, more where the fit extrapolates over the skipped rows); 0.27
    # with 4 channels missing 200 of their rows
    assert before > 4
    assert after < 0.35
    assert after_lost < 0.35


# ------------------------------------------------------------------ steps 4 and 5: background, ripple
def _channel_steps(scene, pre, background=True):
    """Steps 2–3 (and 4) in channel layout, as the Preprocessor runs them."""
    region, raws = pre.region, scene["raws"]
    dark, dark_ov, good = pre._calib
    layout = region.take(raws, out=np.empty((len(raws), *region.shape), np.float32))
    usable = good & (layout != 0)
    clean.subtract_dark(layout, dark)
    ov = region.overscan(raws)
    off = clean.overscan_fit(ov.astype(np.float32) - dark_ov, valid=ov != 0)
    clean.subtract_overscan(layout, off, region.rows)
    if background:
        clean.subtract_background(layout, 15.0, usable)
    return layout, usable


def test_background_step_removes_column_offsets(scene, cleaned):
    pre, _ = cleaned
    # the simulator offsets each clocked column by N(0, 1.5 ADU) in every frame
    before, usable = _channel_steps(scene, pre, background=False)
    after, _ = _channel_steps(scene, pre, background=True)

    def column_error(layout):
        m = np.where(usable & (np.abs(layout) < 15), layout, np.nan)
        est = np.nanmean(m, axis=-2)  # per column, what is left of its offset
        est -= np.nanmean(est[..., :10], axis=-1, keepdims=True)  # the channel's mean went
        return float(np.sqrt(np.nanmean(est[..., :10] ** 2)))

    # measured: 1.5 ADU rms per-column offset before (the planted 1.5), 0.19 ADU after
    # (the ripple, still there at this step, is what keeps the column means from 0)
    assert abs(column_error(before) - 1.5) < 0.3
    assert column_error(after) < 0.3


def test_ripple_lines_are_found_and_fitted_out(scene, cleaned):
    pre, _ = cleaned
    layout, usable = _channel_steps(scene, pre)
    shape = layout.shape
    series = layout.reshape(*shape[:-2], -1)
    bg = ((np.abs(layout) < 15) & usable).reshape(series.shape)
    lines = np.sort(clean.ripple_lines(series, bg))
    planted = sim.FCCDDefects().ripple_cycles_per_sample
    # all three lines, each within 2e-5 cycles/sample (measured ≤ 1.2e-5)
    assert len(lines) == 3 and np.allclose(lines, planted, atol=2e-5)
    truth = pre.region.take(np.stack([t.ripple for t in scene["truths"]]) - scene["dark_ripple"])
    est = clean.remove_ripple(layout, 15.0, usable)
    u = np.broadcast_to(usable, truth.shape)

    def rms(d):
        d = d - d.mean(axis=-2, keepdims=True)  # per-column constants are step 4's business
        return float(np.sqrt((d[u] ** 2).mean()))

    # measured: 3.6 ADU rms of ripple (frame's less the darks' mean) before, 0.43 ADU left;
    # the floor is the noise of 12 fitted numbers per channel (≈ 5·√(12/3000) = 0.3 ADU).
    # Masking the bins and back-transforming, as COSMIC does, left 1.1 ADU.
    assert rms(truth) > 3.0
    assert rms(est - truth) < 0.6


# ------------------------------------------------------------------ steps 1, 6–9 and the whole chain
def test_centre_is_found_off_the_detector_centre(cleaned):
    pre, _ = cleaned
    # measured (970.2, 466.5) for the beam at (972, 466): within 2 px
    assert abs(pre.center[0] - CENTER[0]) < 2.5 and abs(pre.center[1] - CENTER[1]) < 1.5


def test_cleaned_frames_match_the_true_photons(scene, cleaned):
    pre, out = cleaned
    assert out.frames.shape == (8, 128, 128) and out.frames.dtype == np.float32
    assert out.frames.min() >= 0
    assert out.valid.all(), out.flags
    ideal = _ideal(scene, pre.center)
    # photons kept: measured +1.2 % (noise above the threshold, dilated neighbours)
    ratio = out.frames.sum((1, 2)).mean() / ideal.sum((1, 2)).mean()
    assert abs(ratio - 1) < 0.03
    # pixel by pixel: measured rms difference 1.7 % of the pattern's spread
    rel = float(np.sqrt(((out.frames - ideal) ** 2).mean()) / ideal.std())
    assert rel < 0.03


def test_beamstop_transmission_is_divided_out(scene, cleaned):
    pre, out = cleaned
    ideal = _ideal(scene, pre.center)
    # the beamstop's footprint on the 128² frames (radius 40/4 = 10 px)
    cy = BEAMSTOP.center_px[0] - (round(pre.center[0]) - 256)
    cx = BEAMSTOP.center_px[1] - (round(pre.center[1]) - 256)
    yy, xx = np.mgrid[0:128, 0:128]
    inside = np.hypot(yy - cy / 4, xx - cx / 4) < 8
    # measured: photons under the beamstop 1.002 of the truth (0.05 without the division)
    got = out.frames[:, inside].sum() / ideal[:, inside].sum()
    assert abs(got - 1) < 0.05


def test_ideal_camera_and_dark_frame(scene):
    """A dark frame cleans to almost nothing."""
    pre = clean.Preprocessor(scene["dark"], scene["settings"], np)
    pre(scene["raws"][:2])  # finds the centre
    dark_frame = scene["noise"].raw_frame(scene["rng"])
    out = pre(dark_frame[None])
    total = float(scene["pattern"].sum())
    # measured 540 photons of noise over the crop: 0.075 % of a frame
    assert float(out.frames.sum()) < 2e-3 * total


def test_lost_packets_and_saturation_flag_the_frame(scene, cleaned):
    pre, _ = cleaned
    raws = scene["raws"][:3].copy()
    # a packet lost inside the crop (image pixel (1000, 450)), one outside (row 100)
    inside = np.zeros(fccd.IMAGE_SHAPE, bool)
    inside[1000, 440:460] = True
    raws[0][fccd.image_to_raw(inside.astype(np.uint8)).astype(bool)] = 0
    outside = np.zeros(fccd.IMAGE_SHAPE, bool)
    outside[100, 440:460] = True
    raws[1][fccd.image_to_raw(outside.astype(np.uint8)).astype(bool)] = 0
    sat = np.zeros(fccd.IMAGE_SHAPE, bool)
    sat[980, 470:473] = True
    raws[2][fccd.image_to_raw(sat.astype(np.uint8)).astype(bool)] = 65535
    out = pre(raws)
    assert "20 samples lost" in out.flags[0]
    assert out.flags[1] == ""
    assert "3 saturated pixels" in out.flags[2]
    assert out.valid.tolist() == [False, True, False]


def test_fourier_downsample_keeps_photons_and_centre(xp):
    img = np.zeros((1, 64, 64), np.float32)
    img[0, 30:34, 30:34] = 10
    for window in clean.WINDOWS:
        out = clean.fourier_downsample(xp.asarray(img), 16, window, 2.0)
        out = out.get() if hasattr(out, "get") else out
        assert out.shape == (1, 16, 16)
        assert abs(out.sum() - img.sum()) < 1e-3 * img.sum()
        assert np.unravel_index(out[0].argmax(), (16, 16)) == (8, 8)


def test_fourier_downsample_equals_the_shifted_complex_crop():
    rng = np.random.default_rng(3)
    img = rng.poisson(5, (2, 64, 64)).astype(np.float32)
    out = clean.fourier_downsample(img, 16, "erf", 4.0)
    # reference: centre DC at 0, full complex FFT, crop, window, back, re-centre
    f = np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)))
    idx = np.r_[0:8, 56:64]
    fy = np.fft.fftfreq(16) * 16
    from scipy.special import erf

    r = np.hypot(fy[:, None], fy[None, :])
    w = (erf((0.99 * 8 - r) / 4.0) + 1) / 2
    w[8, :] = w[:, 8] = 0  # the Nyquist row and column are dropped
    ref = np.fft.fftshift(
        np.fft.ifft2(f[:, idx[:, None], idx[None, :]] * w / w[0, 0]).real, axes=(-2, -1)
    )
    assert np.allclose(out, ref, atol=1e-3 * img.max())


# ------------------------------------------------------------------ HDR, noise floor, no darks
def test_hdr_merge_recovers_saturated_pixels():
    rng = np.random.default_rng(4)
    truth = rng.uniform(0, 4000, (2, 32, 32)).astype(np.float32)  # ADU in the long exposure
    full_scale = 3000.0
    long = np.minimum(truth + rng.normal(0, 5, truth.shape), full_scale).astype(np.float32)
    short = (truth / 10 + rng.normal(0, 5, truth.shape)).astype(np.float32)
    merged = clean.merge_hdr(long, short, 1.0, 0.1, saturation_adu=full_scale - 1)
    saturated = long >= full_scale - 1
    assert saturated.mean() > 0.2
    # unsaturated pixels keep the long exposure; saturated ones get 10 × the short one
    # (error: 10 × its 5 ADU noise)
    assert np.array_equal(merged[~saturated], long[~saturated])
    assert float(np.abs(merged - truth)[saturated].std()) < 70
    with pytest.raises(ValueError, match="t_long"):
        clean.merge_hdr(long, short, 0.1, 1.0, full_scale)


def test_noise_floor():
    f = np.array([[0.2, 0.5, 3.0]], np.float32)
    assert np.allclose(clean.subtract_noise_floor(f, 0.5), [[0, 0, 2.5]])


def test_no_darks_still_cleans_with_the_overscan_alone(scene, cleaned):
    _pre, out = cleaned
    nodark = clean.Preprocessor(None, scene["settings"], np)
    got = nodark(scene["raws"][:4])
    # measured: photon totals 0.14 % above the dark-subtracted result (hot pixels pass)
    ratio = got.frames.sum() / out.frames[:4].sum()
    assert abs(ratio - 1) < 0.05


def test_bad_input_is_refused_with_the_fix(scene):
    with pytest.raises(ValueError, match="overscan_order=3"):
        clean.CleanSettings(overscan_order=3)
    with pytest.raises(ValueError, match="crop_px=500"):
        clean.CleanSettings(crop_px=500)
    with pytest.raises(ValueError, match="window='box'"):
        clean.CleanSettings(window="box")
    with pytest.raises(ValueError, match="transmission=0"):
        clean.CleanSettings(beamstop={"center_px": [960, 480], "radius_px": 40, "transmission": 0})
    small = RunningDarkStats((100, 100), np)
    small.update(np.ones((2, 100, 100)))
    with pytest.raises(ValueError, match="same detector settings"):
        clean.Preprocessor(small.result(), scene["settings"], np)
    with pytest.raises(ValueError, match="leaves the 1920×960 detector"):
        clean.Preprocessor(None, clean.CleanSettings(center_px=(100, 100)), np)
    pre = clean.Preprocessor(None, clean.CleanSettings(center_px=(960, 480)), np)
    with pytest.raises(ValueError, match="expected \\(N, \\*\\(1152, 1940\\)\\)"):
        pre(np.zeros((1, 100, 100), np.uint16))


# ------------------------------------------------------------------ NumPy and CuPy agree
def test_numpy_and_cupy_give_the_same_frames(scene, cleaned, xp):
    pre, out = cleaned
    if xp is np:
        pytest.skip("the reference itself")
    gpu = clean.Preprocessor(scene["dark"], scene["settings"], xp)
    got = gpu(xp.asarray(scene["raws"]))
    frames = got.frames.get()
    # float32 on both; FFT libraries differ: agreement to 1e-3 of the pattern's spread
    assert gpu.center == pytest.approx(pre.center, abs=1e-3)
    assert float(np.abs(frames - out.frames).max()) < 1e-3 * float(out.frames.max())
    assert got.flags == out.flags
