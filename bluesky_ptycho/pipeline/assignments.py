"""``KEY=VALUE`` assignments from a command line or a text box, and ``STAGE.KEY=VALUE`` ones.

What ``--set`` takes in ``replay``, ``control set``, ``raw2cxi``, ``reconstruct``
and the viewer's Set box. A value is read as JSON when it parses (numbers,
true/false, lists, tables), else taken as a string.
"""

from __future__ import annotations

import json
from typing import Any


def parse_assignments(pairs: list[str], flag: str = "--set") -> dict[str, Any]:
    """``["a=1", "b=x"]`` → ``{"a": 1, "b": "x"}``; ValueError naming *flag* for a pair
    without ``=``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {pair!r}: write KEY=VALUE, e.g. {flag} name=3")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def stage_assignments(pairs: list[str], flag: str = "--set") -> dict[str, dict[str, Any]]:
    """``["reconstruction.final_iterations=100"]`` → ``{"reconstruction": {"final_iterations": 100}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_assignments(pairs, flag).items():
        stage, dot, name = key.partition(".")
        if not dot or not stage or not name:
            raise ValueError(
                f"{flag} {key}=...: write STAGE.KEY=VALUE, e.g. "
                f"{flag} reconstruction.final_iterations=100"
            )
        out.setdefault(stage, {})[name] = value
    return out
