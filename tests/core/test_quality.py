"""Quality measures on synthetic data: low flux, data-error outliers, drift."""

import numpy as np
import pytest

from bluesky_ptycho.core import sim
from bluesky_ptycho.core.quality import drift_estimate, error_outliers, low_flux, transmission_map


def test_low_flux_flags_dumped_beam_and_nan():
    photons = np.array([1000, 980, 30, np.nan, 1010, 499])
    assert low_flux(photons, 1000.0, 0.5).tolist() == [False, False, True, True, False, True]
    with pytest.raises(ValueError, match="fraction"):
        low_flux(photons, 1000.0, 1.5)


def test_error_outliers_finds_the_planted_frames_only():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:12, :12]
    pos = np.stack([yy.ravel(), xx.ravel()], 1).astype(float)
    # errors vary smoothly over the scan (as a sample's contrast does), with noise
    errors = 0.01 + 0.02 * pos[:, 0] / 12 + rng.normal(0, 0.001, len(pos))
    planted = [17, 60, 100]
    errors[planted] *= 10
    errors[5] = np.nan  # not measured
    found = np.flatnonzero(error_outliers(errors, pos, neighbours=8, factor=4))
    assert found.tolist() == planted


@pytest.mark.parametrize("shift", [(0.0, 0.0), (1.5, -2.0), (-3.0, 0.7)])
def test_drift_estimate_recovers_a_known_sample_shift(shift):
    rng = np.random.default_rng(1)
    obj = sim.test_object((160, 160), rng)
    yy, xx = np.mgrid[-16:16, -16:16]
    probe = np.exp(-(yy**2 + xx**2) / (2 * 5.0**2)).astype(np.complex64)
    tmap = transmission_map(obj, probe)
    corners = np.stack(np.meshgrid(np.arange(20, 100, 6.0), np.arange(20, 100, 6.0)), -1)
    corners = corners.reshape(-1, 2)
    # the sample moved by `shift`: each frame saw the transmission at corner + shift (2x scale)
    from bluesky_ptycho.core.quality import _bilinear

    measured = 2.0 * _bilinear(tmap.astype(np.float64), corners + np.asarray(shift))
    dy, dx = drift_estimate(measured, corners, tmap)
    assert abs(dy - shift[0]) < 0.3 and abs(dx - shift[1]) < 0.3
