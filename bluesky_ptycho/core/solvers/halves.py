"""Resolution without a truth: the Fourier ring correlation of two half-set reconstructions.

The frames are split into two halves by scan order (even and odd points);
each half's object is reconstructed apart, with the full reconstruction's
probe and positions held fixed (object-only rPIE, which converges in a few
passes when the probe is known), and the two objects are compared by their
Fourier ring correlation against the half-bit threshold (van Heel & Schatz
2005). Both halves start from the full object low-passed to periods over
:data:`SHARED_PERIOD_PX` (ptychography from a flat start recovers the lowest
frequencies last, and six passes would leave them apart), so those rings are
shared and not judged: the resolution is the first crossing above them, and
a crossing there reads as "no better than that period". Above them the
halves share no frame, so their noise is independent and what they agree on
is signal; they share the probe, so the figure is a little optimistic where
the probe is wrong. Fewer passes than convergence needs under-resolve both
halves: the estimate then errs on the cautious side.
"""

from __future__ import annotations

import numpy as np

from bluesky_ptycho.core import metrics
from bluesky_ptycho.core.arrays import Array
from bluesky_ptycho.core.solvers.base import Solver
from bluesky_ptycho.core.solvers.options import RpieOptions
from bluesky_ptycho.core.solvers.rpie import RPIE

#: object-only passes over each half (measured: 6 passes give the FRC within a few
#: percent of the resolution 20 passes give; see tests/core/test_halves.py)
HALF_ITERATIONS = 6
#: periods (px) longer than this start from the full reconstruction in both halves
SHARED_PERIOD_PX = 16.0


def half_objects(solver: Solver, iterations: int = HALF_ITERATIONS) -> tuple[list, Array]:
    """The even and odd halves' objects, and the pixels both light well (30 % of the maximum).

    The solver is not changed; its frames are shared, not copied.
    """
    xp = solver.xp
    measured = solver.measured
    lit = solver.illumination()
    region = lit > 0.3 * xp.max(lit)
    start = _low_pass(solver.object, SHARED_PERIOD_PX)
    objects, regions = [], []
    for half in (0, 1):
        part = RPIE.__new__(RPIE)
        part.__dict__.update(solver.__dict__)
        part.options = RpieOptions(
            batch_size=16, alpha=0.1, probe_update_start=-1, position_refinement_start=-1,
            probe_modes=solver.probe.shape[0], seed=half,
        )  # fmt: skip
        part.object = start.copy()
        part.weights = np.zeros_like(solver.weights)
        idx = measured[half::2]
        part.weights[idx] = solver.weights[idx]
        part.positions = solver.positions.copy()
        part.step_scale = 1.0
        part.positions_from = None
        part.probe = solver.probe.copy()
        part._rng = np.random.default_rng(half)
        for _ in range(iterations):
            part._iteration(part.measured)
        objects.append(part.object)
        ill = part.illumination()
        regions.append(ill > 0.3 * xp.max(ill))
    return objects, regions[0] & regions[1] & region


def half_set_frc(solver: Solver, iterations: int = HALF_ITERATIONS) -> metrics.FRC | None:
    """FRC of the even and odd frames' objects (module docstring); None with under 8 frames."""
    if solver.n_measured < 8:
        return None
    objects, region = half_objects(solver, iterations)
    if not bool(region.any()):
        return None
    f = metrics.frc(objects[0], objects[1], region)
    judged = f.frequency > 1.0 / SHARED_PERIOD_PX
    below = np.flatnonzero(judged & (f.correlation < f.half_bit))
    f.resolution_px = (
        SHARED_PERIOD_PX if below.size and below[0] == np.flatnonzero(judged)[0]
        else 1.0 / f.frequency[below[0]] if below.size else 2.0
    )  # fmt: skip
    return f


def _low_pass(obj, period_px: float):
    """*obj* with periods shorter than *period_px* removed (a Gaussian in frequency)."""
    from bluesky_ptycho.core.arrays import fft2, get_xp, ifft2

    xp = get_xp(obj)
    ny, nx = obj.shape
    ky = xp.asarray(np.fft.fftfreq(ny)[:, None])
    kx = xp.asarray(np.fft.fftfreq(nx)[None, :])
    sigma = 0.5 / period_px  # the filter is down to e^-2 at 1/period
    g = xp.exp(-0.5 * (ky**2 + kx**2) / sigma**2).astype(xp.float32)
    return ifft2(fft2(obj) * g).astype(xp.complex64)
