"""The ptychography operators (adjoint identities) and the object error."""

import numpy as np
import pytest

from bluesky_ptycho.core import metrics, ptycho


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
    shifted = ptycho.shifted_probes(probe, ptycho.shift_ramps(np.array([[0.5, 2.0]]), (32, 32)))[
        0, 0
    ]

    def com(a):
        return np.array(np.unravel_index(0, a.shape)) + np.array(
            [
                np.sum(np.arange(32)[:, None] * abs(a) ** 2),
                np.sum(np.arange(32)[None, :] * abs(a) ** 2),
            ]
        ) / np.sum(abs(a) ** 2)

    np.testing.assert_allclose(com(shifted) - com(probe), [0.5, 2.0], atol=0.05)


def test_object_error_ignores_global_phase_and_scale():
    rng = np.random.default_rng(6)
    truth = (rng.standard_normal((20, 20)) + 1j * rng.standard_normal((20, 20))).astype(
        np.complex64
    )
    assert metrics.object_error(2.5 * np.exp(1j * 0.7) * truth, truth) < 1e-6
    assert metrics.object_error(2.5 * np.exp(1j * 0.7) * truth, truth, remove_scale=False) > 0.5
