"""The hard cases, small: what `bluesky-ptycho reconstruct FILE` does with no options.

Each case of :mod:`bluesky_ptycho.core.sim.hard` at 144 points of 64² (the
benchmark runs them at 400 × 128² and 1600 × 256²: docs/benchmarks.md) goes
through :func:`~bluesky_ptycho.apps.reconstruct.prepare` with the defaults
and iterates until the convergence stop. Each threshold is the object error
measured here (seed of the case; shift, phase ramp, global phase and scale
removed; where the true probe lights the object over 30 % of its maximum)
with a margin for other FFT/BLAS builds; the start (flat object, the file's
probe) scores 0.27–0.50, so a solver that did nothing fails.
"""

import numpy as np
import pytest
from scans import hard_scan_data

from bluesky_ptycho.apps.reconstruct import prepare
from bluesky_ptycho.cli import main
from bluesky_ptycho.core import metrics
from bluesky_ptycho.core.ptycho import object_grid, scatter_add, split_positions
from bluesky_ptycho.core.sim import hard
from bluesky_ptycho.core.solvers.setup import MARGIN_PX
from bluesky_ptycho.io.cxi import write_cxi

# case: (measured error at the stop, threshold, measured stop iteration, error after
# 50 more iterations)
MEASURED = {
    "a_probe": (0.0748, 0.10, 80, 0.0768),
    "b_positions": (0.1132, 0.15, 91, 0.1203),
    "c_dose_1e5": (0.0908, 0.12, 75, 0.0927),
    "c_dose_1e4": (0.1456, 0.19, 69, 0.1461),
    "d_coherence": (0.1320, 0.17, 89, 0.1336),
    "e_raster": (0.1059, 0.14, 76, 0.1045),
    "f_phase": (0.1554, 0.19, 72, 0.1499),
    "g_missing": (0.0881, 0.115, 78, 0.0889),
    "h_large": (0.0745, 0.10, 69, 0.0744),
}
#: what stopping may cost against 50 more iterations (measured at most 0.0055, the
#: phase-wrapping sample; before the object restart (object_restart) the raster's 0.014)
STOP_COST = 0.02


def _region(scan, grid):
    p2 = np.sum(np.abs(scan.probe) ** 2, axis=0).astype(np.float32)
    ill = np.zeros(grid.shape, np.float32)
    corners, _ = split_positions(grid.to_pixels(scan.positions_m))
    scatter_add(ill, corners, np.broadcast_to(p2, (len(corners), *p2.shape)))
    return metrics.illuminated_region(ill, 0.3)


@pytest.mark.parametrize("name", list(MEASURED))
def test_defaults_reconstruct_each_hard_case(name):
    _measured, threshold, _stop, _more = MEASURED[name]
    case = hard.small(hard.CASES[name])
    scan = hard.simulate(case)
    solver, pixel, _ = prepare(hard_scan_data(scan))
    grid = object_grid(scan.positions_m, pixel, case.frame_px, MARGIN_PX)
    truth = scan.truth_on(grid.shape, grid.origin_m)
    region = _region(scan, grid)
    start = metrics.object_error(solver.object, truth, region)
    stop = solver.convergence(max_iterations=150)
    while not stop.update(solver):
        solver.iterate(1)
    err = metrics.object_error(solver.object, truth, region)
    assert start > 0.25, start
    assert err < threshold, (name, err, solver.iteration, stop.reason)
    assert solver.iteration < 150, stop.reason  # the convergence stop, not the cap
    # the beam-dump frames are found and left out; nothing else is
    assert set(np.flatnonzero(solver.weights == 0)) == set(np.flatnonzero(scan.bad))
    solver.iterate(50)
    assert err - metrics.object_error(solver.object, truth, region) < STOP_COST


def test_the_simulator_keeps_its_promises():
    """Truth, start probe and faults as documented (small versions)."""
    scan = hard.simulate(hard.small(hard.CASES["g_missing"]))
    assert len(scan.frames) == 144 - round(0.03 * 144)  # frames never written are absent
    assert scan.bad.sum() == round(0.02 * 144)
    flux = scan.frames.sum(axis=(1, 2))
    assert flux[scan.bad].max() < 0.1 * np.median(flux[~scan.bad])
    b = hard.simulate(hard.small(hard.CASES["b_positions"]))
    err_px = (b.positions_m - b.true_positions_m) / b.object_pixel_m
    assert 0.5 < np.abs(err_px).max() < 2 * 0.5 + 1.25 + 0.25  # encoder + clip + drift, halved
    phase = np.angle(hard.simulate(hard.small(hard.CASES["f_phase"])).object)
    assert np.ptp(phase) > 6  # the strong phase object wraps
    d = hard.simulate(hard.small(hard.CASES["d_coherence"]))
    assert d.probe.shape[0] == 9  # one probe per source point; intensities add


def _run_to_stop(scan, **options):
    case = scan.case
    solver, pixel, _ = prepare(hard_scan_data(scan), options=options or None)
    grid = object_grid(scan.positions_m, pixel, case.frame_px, MARGIN_PX)
    truth = scan.truth_on(grid.shape, grid.origin_m)
    stop = solver.convergence(max_iterations=150)
    while not stop.update(solver):
        solver.iterate(1)
    return solver, metrics.object_error(solver.object, truth, _region(scan, grid))


def test_the_object_restarts_once_when_the_probe_settles_far_from_a_poor_start(tmp_path, capsys):
    """The low-dose case, small (its probe settles early; measured: restart at iteration 30,
    object error 0.1456 at the stop; 0.2076 without the restart: the object built around
    the poor starting probe keeps that probe's errors)."""
    scan = hard.simulate(hard.small(hard.CASES["c_dose_1e4"]))
    solver, err = _run_to_stop(scan)
    restart = solver.object_restarted_at
    assert restart is not None and 10 < restart < solver.iteration, restart
    assert solver.probe_distance() > 0.5
    # positions wait for two probe updates around the new object
    assert solver.positions_from is not None and solver.positions_from >= restart + 3
    assert np.isnan(solver.changes[restart])  # the restart is not read as convergence news
    # the command line says so
    path = write_cxi(tmp_path / "c_dose_1e4.cxi", hard_scan_data(scan))
    assert main(["reconstruct", str(path), "-o", str(tmp_path / "out.cxi"), "--quiet"]) == 0
    assert f"the object restarted at iteration {restart}" in capsys.readouterr().out
    plain, err_plain = _run_to_stop(scan, object_restart=0)
    assert plain.object_restarted_at is None
    assert err < 0.18 < err_plain, (err, err_plain)


def test_no_restart_when_the_start_probe_was_good():
    """Started from the true probe, the probe settles near its start: the object is kept."""
    scan = hard.simulate(hard.small(hard.CASES["a_probe"]))
    scan.start_probe = scan.probe[0]
    solver, err = _run_to_stop(scan)
    assert solver.positions_from is not None  # the probe settled: the restart was weighed
    assert solver.object_restarted_at is None
    assert solver.probe_distance() < 0.5
    assert err < 0.10, err
