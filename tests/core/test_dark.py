"""Dark statistics against a direct NumPy computation."""

import numpy as np
import pytest

from bluesky_ptycho.core.dark import DarkSettings, RunningDarkStats


def test_running_stats_match_numpy(xp):
    rng = np.random.default_rng(1)
    frames = rng.normal(4096, 5, (23, 40, 30)).astype(np.uint16)
    frames[:, 3, 4] = 4100  # stuck pixel: std 0
    frames[:, 5, 6] += (rng.normal(0, 80, 23)).astype(np.int64).astype(np.uint16)  # noisy
    stats = RunningDarkStats((40, 30), xp)
    for chunk in (frames[:1], frames[1:8], frames[8:9], frames[9:]):  # uneven batches
        stats.update(xp.asarray(chunk))
    ref = frames.astype(np.float64)
    np.testing.assert_allclose(_np(stats.mean), ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(_np(stats.variance), ref.var(0, ddof=1), rtol=1e-9, atol=1e-9)
    res = stats.result(DarkSettings(max_std_adu=30))
    bad = _np(res.bad)
    assert bad[3, 4] and bad[5, 6] and bad.sum() == 2
    assert res.n_frames == 23


def test_dropped_packets_are_ignored(xp):
    rng = np.random.default_rng(2)
    frames = rng.normal(1000, 3, (10, 8, 8)).astype(np.uint16)
    frames[2, :4] = 0  # a dropped packet
    stats = RunningDarkStats((8, 8), xp)
    stats.update(xp.asarray(frames))
    masked = np.ma.masked_equal(frames.astype(np.float64), 0)
    np.testing.assert_allclose(_np(stats.mean), masked.mean(0).filled(0), rtol=1e-12)
    np.testing.assert_allclose(_np(stats.variance), masked.var(0, ddof=1).filled(0), rtol=1e-9)


def test_wrong_shape_is_refused():
    stats = RunningDarkStats((8, 8), np)
    with pytest.raises(ValueError, match=r"shape \(9, 8\)"):
        stats.update(np.zeros((2, 9, 8)))


def _np(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)
