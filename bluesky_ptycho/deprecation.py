"""Old import paths that keep working for one release, with a ``DeprecationWarning``.

The package was regrouped by layer (``docs/decisions/0006-layout-by-layer.md``); a
module at its old path is a small alias made by :func:`moved_to`, which looks a name
up in the new modules only when it is asked for (the alias itself imports nothing).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any


def moved_to(old: str, *new: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for *old*: each name from the first of *new* that defines it
    (or, failing that, the first that has it)."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        found = []
        for target in new:
            module = importlib.import_module(target)
            if hasattr(module, name):
                found.append((target, getattr(module, name)))
        if not found:
            raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved to {new[0]})")
        target, value = next(
            ((t, v) for t, v in found if getattr(v, "__module__", None) == t), found[0]
        )
        warnings.warn(
            f"{old}.{name} is now {target}.{name}; the old path goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return value

    return __getattr__
