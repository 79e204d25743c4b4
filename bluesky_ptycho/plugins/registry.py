"""The stage registry: stages are found under the entry-point group ``bluesky_ptycho.stages``.

Loaded lazily: a stage's module is imported only when the stage is asked for,
so a pipeline that does not use a GPU stage never imports CuPy. A third-party
package adds a stage by declaring an entry point in that group; the class
describes itself (as Nanosurveyor describes every module by key and value, Daurer et al. 2017):

- ``inputs`` / ``optional_inputs``: the data it consumes, as
  ``"<producer>/<stream>"`` — ``raw/primary`` and ``raw/dark`` are the
  RunEngine's streams, ``frame_cleaning/cleaned`` the ``cleaned`` stream of
  the run the ``frame_cleaning`` stage derives;
- ``outputs``: what it produces, in the same form;
- ``params``: one :class:`Param` per keyword of its constructor (besides
  ``device``), with type, default, unit, range and a line of documentation.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

GROUP = "bluesky_ptycho.stages"


@cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_stages() -> list[str]:
    """Names of the installed stages."""
    return sorted(_entry_points())


def load_stage(name: str) -> Any:
    """The stage class registered as *name*.

    Raises
    ------
    LookupError
        When no installed package registers *name*; the message lists those that do.
    """
    eps = _entry_points()
    if name not in eps:
        from bluesky_ptycho.core.params import close_to

        known = ", ".join(sorted(eps)) or "none: is bluesky_ptycho installed (pip install -e .)?"
        near = close_to(name, eps)
        raise LookupError(
            f"no stage named {name!r} is installed (entry-point group {GROUP!r}); "
            + (f"did you mean {near!r}? " if near else "")
            + f"known: {known}"
        )
    return eps[name].load()


def distribution_of(name: str) -> str:
    """The installed package that registers stage *name* (e.g. 'bluesky_ptycho 0.1.0')."""
    ep = _entry_points()[name]
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "?"


def describe(name: str) -> str:
    """The stage's description: what it does, its inputs, outputs and parameters."""
    cls = load_stage(name)
    summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    lines = [f"{name}  ({distribution_of(name)}, {cls.__module__}.{cls.__qualname__})"]
    lines.append(f"    {summary}")
    lines.append(
        f"    inputs:  {', '.join(cls.inputs) or '-'}"
        + (f"  (optional: {', '.join(cls.optional_inputs)})" if cls.optional_inputs else "")
    )
    lines.append(f"    outputs: {', '.join(cls.outputs) or '-'}")
    lines.append("    parameters:")
    for p in cls.params:
        default = "from the run's metadata" if p.default is None else repr(p.default)
        lines.append(f"      {p.name} = {default}    # {p.expected()}")
        lines.append(f"          {p.doc}")
        for group, nested in cls.nested_params(p.name).items():
            lines.append(f"          {group}:")
            for q in nested:
                lines.append(f"            {q.name} = {q.default!r}    # {q.expected()}")
    return "\n".join(lines)
