"""The stage registry: stages are found under the entry-point group ``bluesky_ptycho.stages``.

Loaded lazily: a stage's module is imported only when the stage is asked for,
so a pipeline that does not use a GPU stage never imports CuPy. A third-party
package adds a stage by declaring an entry point in that group.
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


def load_stage(name: str) -> type:
    """The stage class registered as *name*.

    Raises
    ------
    LookupError
        When no installed package registers *name*; the message lists those that do.
    """
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none: is bluesky_ptycho installed (pip install -e .)?"
        raise LookupError(
            f"no stage named {name!r} is installed (entry-point group {GROUP!r}); known: {known}"
        )
    return eps[name].load()
