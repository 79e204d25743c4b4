"""Ptychography solvers for scans whose frames arrive over time.

Four algorithms share one state (:class:`Solver`): the object, the probe as
``M`` incoherent modes (mixed states), the view positions, and the measured
amplitudes with a weight per frame. A solver is allocated for the whole
scan before its first frame; :meth:`Solver.add_frames` may be called at any
time, in any order, between iterations; frames not yet measured, or flagged,
have weight 0 and take no part. :meth:`Solver.add_points` appends scan
points (rescans), growing the object array when they fall outside it.

- :class:`RPIE` — mini-batch ePIE/rPIE (Maiden, Johnson & Li 2017; ePIE is
  ``alpha = beta = 1``): fast convergence per pass, the streaming default.
- :class:`DifferenceMap` — Thibault et al. 2009: projections with stored
  exit waves, object and probe from the overlap constraint each iteration.
- :class:`RAAR` — relaxed averaged alternating reflections (Luke 2005;
  SHARP's default): the same machinery, relaxed by ``beta`` (1 is DM).
- :class:`LSQML` — least-squares maximum likelihood (Odstrčil, Menzel &
  Guizar-Sicairos 2018): Gaussian or Poisson noise, preconditioned object
  and probe directions with optimal step lengths per view.

Every solver refines the probe (all modes, orthogonalised after each
iteration) from ``probe_update_start``; RPIE and LSQML also refine positions
from ``position_refinement_start``. Arrays are NumPy or CuPy, single
precision; per-frame arrays live in a :class:`FrameStore`, on the device or,
for scans larger than its memory, on the host and moved block by block.
"""

from __future__ import annotations

from bluesky_ptycho.core.solvers.base import (
    FrameStore,
    Solver,
    device_budget,
    mode_powers,
    orthogonalize_modes,
)
from bluesky_ptycho.core.solvers.lsqml import LSQML
from bluesky_ptycho.core.solvers.options import (
    DmOptions,
    LsqmlOptions,
    RaarOptions,
    RpieOptions,
    SolverOptions,
    options_doc,
)
from bluesky_ptycho.core.solvers.raar import RAAR, DifferenceMap
from bluesky_ptycho.core.solvers.registry import ALGORITHMS, ALIASES, make_options, solver_class
from bluesky_ptycho.core.solvers.rpie import RPIE

__all__ = [
    "ALGORITHMS",
    "ALIASES",
    "LSQML",
    "RAAR",
    "RPIE",
    "DifferenceMap",
    "DmOptions",
    "FrameStore",
    "LsqmlOptions",
    "RaarOptions",
    "RpieOptions",
    "Solver",
    "SolverOptions",
    "device_budget",
    "make_options",
    "mode_powers",
    "options_doc",
    "orthogonalize_modes",
    "solver_class",
]
