"""The ptychography operators (adjoint identities) and the ePIE solver."""

import numpy as np
import pytest

from bluesky_ptycho.core import metrics, ptycho, sim, solvers
from bluesky_ptycho.core.geometry import Geometry, ZonePlate


def _rand_c(xp, rng, shape):
    return xp.asarray(
        (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    )


def _vdot(xp, a, b):
    return complex(xp.vdot(a, b))


@pytest.fixture
def setup(xp):
    rng = np.random.default_rng(3)
    positions = xp.asarray(rng.uniform(0, 20, (7, 2)))  # sub-pixel corners
    obj = _rand_c(xp, rng, (60, 60))
    probe = _rand_c(xp, rng, (32, 32))
    waves = _rand_c(xp, rng, (7, 32, 32))
    return xp, obj, probe, positions, waves


def test_adjoint_object(setup):
    xp, obj, probe, pos, waves = setup
    lhs = _vdot(xp, ptycho.forward(obj, probe, pos), waves)
    rhs = _vdot(xp, obj, ptycho.adjoint_object(waves, probe, pos, obj.shape))
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)


def test_adjoint_probe(setup):
    xp, obj, probe, pos, waves = setup
    lhs = _vdot(xp, ptycho.forward(obj, probe, pos), waves)
    rhs = _vdot(xp, probe, ptycho.adjoint_probe(waves, obj, pos))
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)


def test_integer_positions_need_no_shift(xp):
    rng = np.random.default_rng(4)
    obj = _rand_c(xp, rng, (40, 40))
    probe = _rand_c(xp, rng, (16, 16))
    psi = ptycho.exit_waves(obj, probe, xp.asarray([[3.0, 5.0]]))
    ref = probe * obj[3:19, 5:21]
    assert float(xp.abs(psi[0] - ref).max()) < 1e-4


def test_subpixel_shift_moves_the_probe():
    probe = np.zeros((32, 32), np.complex64)
    probe[10:14, 10:14] = 1
    shifted = ptycho.shifted_probes(probe, ptycho.shift_ramps(np.array([[0.5, 2.0]]), (32, 32)))[0, 0]
    def com(a):
        return (
            np.array(np.unravel_index(0, a.shape))
            + np.array(
                [
                    np.sum(np.arange(32)[:, None] * abs(a) ** 2),
                    np.sum(np.arange(32)[None, :] * abs(a) ** 2),
                ]
            )
            / np.sum(abs(a) ** 2)
        )
    np.testing.assert_allclose(com(shifted) - com(probe), [0.5, 2.0], atol=0.05)


# Measured on this scan (Poisson noise, 1e6 photons per frame, 200 points, 30
# epochs): object error 0.047, 0.056, 0.053 for view-order seeds 0, 1, 2 after
# removing global phase and scale; 0.08 leaves room for other BLAS/FFT builds.
RECON_THRESHOLD = 0.08


def test_epie_reconstructs_a_small_scan(xp):
    g = Geometry()
    sample = sim.SimulatedSample(g, ZonePlate(), scan_extent_m=2.4e-6)
    pos_m = sim.fermat_positions(200, 100e-9)
    rng = np.random.default_rng(0)
    frames = np.stack(
        [sim.downsample_to_frame(sample.intensity(p, 1e6), g.downsample) for p in pos_m]
    )
    frames = rng.poisson(frames).astype(np.float32)
    grid = ptycho.object_grid(pos_m, g.object_pixel_size_m, g.frame_px)
    probe0 = ptycho.probe_from_counts(
        sim.fzp_probe(g, ZonePlate(defocus_m=12e-6)), frames.sum((1, 2)).mean()
    )
    solver = solvers.RPIE(xp.asarray(grid.to_pixels(pos_m)), grid.shape, xp.asarray(probe0))
    assert solver.n_measured == 0
    solver.add_frames(np.arange(len(frames)), xp.asarray(frames))
    errors = solver.iterate(30)
    assert errors[-1] < errors[0]
    truth = xp.asarray(sample.object_on(grid))
    region = metrics.illuminated_region(solver.illumination(), 0.3)
    err = metrics.object_error(solver.object, truth, region)
    assert err < RECON_THRESHOLD, err
    # the initial guess is far worse
    assert metrics.object_error(xp.ones_like(truth), truth, region) > 3 * err


def test_flagged_frames_take_no_part(xp):
    rng = np.random.default_rng(5)
    solver = solvers.RPIE(
        xp.asarray(rng.uniform(0, 10, (4, 2))), (60, 60), _rand_c(xp, rng, (32, 32))
    )
    solver.add_frames([0, 1, 2], xp.ones((3, 32, 32), xp.float32))
    solver.flag([1])
    assert solver.n_measured == 2
    assert float(solver.weights[1]) == 0 and float(solver.weights[3]) == 0


def test_views_outside_the_object_are_refused():
    with pytest.raises(ValueError, match="outside the object array"):
        solvers.RPIE(np.array([[50.0, 0.0]]), (60, 60), np.ones((32, 32), np.complex64))


def test_object_error_ignores_global_phase_and_scale():
    rng = np.random.default_rng(6)
    truth = (rng.standard_normal((20, 20)) + 1j * rng.standard_normal((20, 20))).astype(
        np.complex64
    )
    assert metrics.object_error(2.5 * np.exp(1j * 0.7) * truth, truth) < 1e-6
    assert metrics.object_error(2.5 * np.exp(1j * 0.7) * truth, truth, remove_scale=False) > 0.5
