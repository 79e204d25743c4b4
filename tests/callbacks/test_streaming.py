"""The streaming reconstruction's snapshots around finish()."""

from __future__ import annotations

import threading

import numpy as np

from bluesky_ptycho.callbacks.streaming import StreamingReconstruction
from bluesky_ptycho.core import ptycho, sim, solvers
from bluesky_ptycho.core.geometry import ZonePlate


def test_per_frame_errors_are_repeated_between_finish_and_the_final_snapshot():
    """After finish() no frame comes in: the snapshots before the final one repeat the last
    per-frame errors (each is a forward pass over every frame, a third of an iteration);
    the final snapshot has them afresh, against the final model."""
    scan = sim.simulate_scan(n_side=8, frame_px=64, photons=1e6, seed=3)
    p = sim.fzp_probe(scan.geometry, ZonePlate(defocus_m=12e-6))
    probe = ptycho.probe_from_counts(p, scan.intensities.sum((1, 2)).mean())
    s = solvers.RPIE(scan.positions_px, scan.grid.shape, probe)
    snaps = []
    calls = []
    count = s.frame_errors

    def counted(*a, **k):
        calls.append(s.iteration)
        return count(*a, **k)

    s.frame_errors = counted  # type: ignore[method-assign]
    stream = StreamingReconstruction(
        s, snapshot_interval=1e-6, final_iterations=6, min_frames=8, on_snapshot=snaps.append
    )
    stream.add_frames(np.arange(len(scan.intensities)), scan.intensities)
    while s.iteration < 5:
        threading.Event().wait(0.02)
    stream.finish()
    final = stream.wait(120)
    assert final is not None and final.final
    after = [x for x in snaps if x.iteration > final.iteration - stream._after and not x.final]
    assert after, "no snapshot between finish() and the final one"
    before = [x for x in snaps if x.iteration <= final.iteration - stream._after]
    for x in after:
        np.testing.assert_array_equal(x.frame_errors, before[-1].frame_errors)
        assert x.frame_errors is not before[-1].frame_errors  # its own array
    assert calls[-1] == final.iteration  # the final snapshot's, against the final model
    assert np.isfinite(final.frame_errors).all()
    assert not np.array_equal(final.frame_errors, before[-1].frame_errors)
