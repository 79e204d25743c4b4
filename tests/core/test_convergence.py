"""The convergence stop and the half-set FRC."""

import numpy as np
import pytest

from bluesky_ptycho.core import ptycho, sim, solvers
from bluesky_ptycho.core.geometry import ZonePlate
from bluesky_ptycho.core.solvers.convergence import Convergence
from bluesky_ptycho.core.solvers.halves import half_set_frc


class _Changes:
    """Stands in for a solver: only its recorded object changes."""

    def __init__(self):
        self.changes = []


def test_the_stop_sums_the_geometric_tail():
    # changes 0.1, 0.05, 0.025 ...: r = 0.5, the tail after δ is δ·r/(1 − r) = δ
    s, stop = _Changes(), Convergence(tolerance=4e-3, min_iterations=3)
    k = 0
    while True:
        s.changes.append(0.1 * 0.5**k)
        k += 1
        if stop.update(s):
            break
    assert s.changes[-1] < 4e-3 <= s.changes[-2]  # stopped at the first δ under the tolerance
    assert stop.remaining == pytest.approx(s.changes[-1]) and "converged" in stop.reason


def test_changes_that_do_not_shrink_count_four_times_and_a_nan_starts_afresh():
    s, stop = _Changes(), Convergence(tolerance=4e-3, min_iterations=3, max_iterations=50)
    for _ in range(10):  # a plateau at 2e-3: r taken as 0.8, tail 4 × 2e-3 > 4e-3
        s.changes.append(2e-3)
        assert not stop.update(s)
    assert stop.remaining == pytest.approx(8e-3)
    s.changes += [float("nan"), 1e-3]
    assert not stop.update(s) and stop.remaining == float("inf")  # one change: no ratio yet
    s.changes.append(1e-3 * 0.1)
    assert stop.update(s)  # r = 0.1: tail 1.1e-5
    never = Convergence(tolerance=0, max_iterations=3)
    t = _Changes()
    t.changes = [1e-9, 1e-10, 1e-11]
    assert never.update(t) and never.reason == "3 iterations"


@pytest.fixture(scope="module")
def scan():
    return sim.simulate_scan(n_side=12, frame_px=64, photons=1e6, seed=0)


def _solver(scan, idx=None):
    p = sim.fzp_probe(scan.geometry, ZonePlate(defocus_m=12e-6))
    p = ptycho.probe_from_counts(p, scan.intensities.sum((1, 2)).mean())
    s = solvers.RPIE(scan.positions_px, scan.grid.shape, p)
    idx = np.arange(len(scan.intensities)) if idx is None else idx
    s.add_frames(idx, scan.intensities[idx])
    return s


def test_half_set_frc_tells_signal_from_noise(scan):
    """Measured (seed 0, 40 iterations, 1e6 photons): 2.0 px (Nyquist, every ring above the
    half-bit curve); the same scan at 1e3 photons a frame: 4.2 px."""
    s = _solver(scan)
    s.iterate(40)
    f = half_set_frc(s)
    assert f is not None and f.resolution_px < 2.6, f.resolution_px
    dim = sim.simulate_scan(n_side=12, frame_px=64, photons=1e3, seed=0)
    d = _solver(dim)
    d.iterate(40)
    g = half_set_frc(d)
    assert g.resolution_px > f.resolution_px + 1.0, (g.resolution_px, f.resolution_px)
    assert half_set_frc(_solver(scan, np.arange(5))) is None  # too few frames
