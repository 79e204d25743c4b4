"""When to stop iterating: the object has stopped changing.

After each iteration the solver records how much the object moved,
``δ_k = ‖O_k − O_{k−1}‖ / ‖O_k‖`` over the pixels the scan lights (more than
10 % of the brightest illumination). Near a solution the changes shrink
geometrically, ``δ_{k+1} ≈ r δ_k``, and the object still has
``δ_k r / (1 − r)`` to go (the tail of the series). :class:`Convergence`
estimates ``r`` from the last changes (at most 0.8: changes that do not
shrink are mostly the noise of a stochastic solver and the slow drift of
the object–probe ambiguities, which the object error does not see, so the
tail is taken as at most 4 δ_k) and stops once that remaining distance is
below ``tolerance`` (relative to the object's norm, the unit of the object
error). With noisy data the changes of a stochastic solver level off instead
of shrinking (``r`` near 1): the solvers then lower their step (see
:attr:`~bluesky_ptycho.core.solvers.base.Solver.step_scale`), which makes the
changes shrink again, so the rule stops there too; ``max_iterations`` caps
it. Where the changes level off even at the smallest step (positions
still being refined, the ambiguities drifting), iterating also stops once the data error has been flat (within
:data:`FLAT` over :data:`FLAT_SPAN` iterations) at that step: nothing
the solver can still do moves it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

#: the stop's default tolerance: the object is within 0.4 % (of its norm) of where it goes
TOLERANCE = 4e-3
#: the data error is flat when it changed by less than this fraction ...
FLAT = 2e-3
#: ... over this many iterations
FLAT_SPAN = 2


def _flat_at_floor(solver: object) -> bool:
    """The solver's step is at its floor and its data error has stopped moving."""
    opts = getattr(solver, "options", None)
    floor = getattr(opts, "min_step_scale", None)
    errors = getattr(solver, "errors", [])
    if floor is None or getattr(solver, "step_scale", 1.0) > floor or len(errors) <= FLAT_SPAN:
        return False
    if not getattr(opts, "step_adapt", False):
        return False
    a, b = errors[-1 - FLAT_SPAN], errors[-1]
    return abs(a - b) <= FLAT * abs(b)


@dataclass
class Convergence:
    """The stopping rule (module docstring); call :meth:`update` after every iteration.

    Attributes
    ----------
    tolerance : float
        Remaining object change (relative to its norm) at which to stop; 0:
        never (only ``max_iterations`` stops).
    min_iterations : int
        Iterations to run before the rule may stop.
    max_iterations : int
        Stop after this many updates whatever the changes (0: no cap).
    window : int
        Number of recent ratios ``δ_k / δ_{k−1}`` whose geometric mean estimates ``r``.
    max_ratio : float
        ``r`` is taken as at most this (the tail is then at most ``δ r/(1−r)``).
    reason : str
        Why it stopped ("" while it has not).
    """

    tolerance: float = TOLERANCE
    min_iterations: int = 3
    max_iterations: int = 0
    window: int = 3
    max_ratio: float = 0.8
    reason: str = ""
    seen: int = 0
    remaining: float = math.inf
    _changes: list[float] = field(default_factory=list)
    _read: int = 0

    def after(self, solver: object) -> Convergence:
        """Judge only the changes from now on (what the solver did before is history)."""
        self._read = len(getattr(solver, "changes", []))
        return self

    def update(self, solver: object) -> bool:
        """Take the solver's latest object changes; True when iterating should stop.

        A NaN in the solver's changes marks a new regime (a lower step, a grown
        object): the ratios start afresh after it.
        """
        changes = getattr(solver, "changes", [])
        new, self._read = changes[self._read :], len(changes)
        if not new:
            return False
        for c in new:
            if c != c:  # NaN: a new regime
                self._changes = []
            else:
                self.seen += 1
                self._changes.append(float(c))
        d = self._changes[-(self.window + 1) :]
        if len(d) >= 2:
            ratios = [b / a for a, b in itertools.pairwise(d) if a > 0]
            r = (
                math.exp(sum(math.log(max(x, 1e-6)) for x in ratios) / len(ratios))
                if ratios
                else 1.0
            )
            r = min(r, self.max_ratio)
            self.remaining = d[-1] * r / (1 - r)
        else:
            self.remaining = math.inf
        if (
            self.tolerance > 0
            and self.seen >= self.min_iterations
            and self.remaining < self.tolerance
        ):
            self.reason = f"object converged (remaining change {self.remaining:.2g})"
            return True
        if self.tolerance > 0 and self.seen >= self.min_iterations and _flat_at_floor(solver):
            self.reason = "data error flat at the smallest step"
            return True
        if self.max_iterations and self.seen >= self.max_iterations:
            self.reason = f"{self.max_iterations} iterations"
            return True
        return False
