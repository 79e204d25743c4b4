"""Solvers by name, and their options from keyword values."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from bluesky_ptycho.core.params import unknown
from bluesky_ptycho.core.solvers.base import Solver
from bluesky_ptycho.core.solvers.lsqml import LSQML
from bluesky_ptycho.core.solvers.options import SolverOptions
from bluesky_ptycho.core.solvers.raar import RAAR, DifferenceMap
from bluesky_ptycho.core.solvers.rpie import RPIE

SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (RPIE, DifferenceMap, RAAR, LSQML)}


#: Accepted aliases of algorithm names
ALIASES = {"epie": "rpie", "ml": "lsqml", "lsq-ml": "lsqml", "difference_map": "dm"}
#: The names a user picks an algorithm by (``epie`` is rPIE with ``alpha = beta = 1``)
ALGORITHMS = ("rpie", "epie", "dm", "raar", "lsqml")


def solver_class(algorithm: str) -> type[Solver]:
    """The solver class for an algorithm name (``rpie``/``epie``, ``dm``, ``raar``, ``lsqml``)."""
    key = ALIASES.get(algorithm.lower(), algorithm.lower())
    if key not in SOLVERS:
        raise ValueError(
            f"algorithm={algorithm!r} is not known: use one of {sorted(SOLVERS)} "
            f"(aliases {sorted(ALIASES)})"
        )
    return SOLVERS[key]


def make_options(algorithm: str, **values: Any) -> SolverOptions:
    """The options of *algorithm* from keyword values, refusing unknown names.

    ``algorithm="epie"`` sets ``alpha = beta = 1`` unless given.
    """
    cls = solver_class(algorithm).Options
    known = {f.name for f in fields(cls)}
    extra = sorted(set(values) - known)
    if extra:
        raise ValueError(
            "; ".join(
                f"{cls.__name__} has no option {name!r}: {unknown(name, known, 'options')}"
                for name in extra
            )
        )
    if algorithm.lower() == "epie":
        values = {"alpha": 1.0, "beta": 1.0, **values}
    return cls(**values)
