"""Declared parameters: one declaration per setting (type, default, unit, range, choices, doc)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    """One parameter of a stage.

    Attributes
    ----------
    name : str
    kind : {"int", "float", "bool", "str", "table", "list"}
        Its TOML type (``float`` also takes integers; ``list`` of numbers).
    default : Any
        None where the run's metadata supplies it (*optional* is then True).
    doc : str
        One line for ``bluesky-ptycho stages``.
    unit : str
    min, max : float, optional
        Inclusive bounds, or exclusive when *exclusive* is True.
    choices : tuple, optional
        The allowed values of a string.
    length : int, optional
        The length of a list.
    optional : bool
        None is allowed (taken from the run's metadata).
    """

    name: str
    kind: str
    default: Any
    doc: str
    unit: str = ""
    min: float | None = None
    max: float | None = None
    exclusive: bool = False
    choices: tuple | None = None
    length: int | None = None
    optional: bool = False

    def problem(self, value: Any) -> str | None:
        """What is wrong with *value* for this parameter (in words), or None when it is fine."""
        if value is None:
            return None if self.optional else f"must be given ({self.expected()})"
        kind_ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "table": isinstance(value, dict),
            "list": isinstance(value, list | tuple)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value),
        }[self.kind]
        if not kind_ok:
            return f"is a {_toml_type(value)}; expected {self.expected()}"
        if self.choices is not None and value not in self.choices:
            return f"is not one of {list(self.choices)}"
        if self.length is not None and len(value) != self.length:
            return f"has {len(value)} values; expected {self.length}"
        if self.kind in ("int", "float"):
            lo, hi = self.min, self.max
            if lo is not None and (value <= lo if self.exclusive else value < lo):
                return (
                    f"is {'at or ' if self.exclusive else ''}below the minimum {lo}{self._unit()}"
                )
            if hi is not None and (value >= hi if self.exclusive else value > hi):
                return (
                    f"is {'at or ' if self.exclusive else ''}above the maximum {hi}{self._unit()}"
                )
        return None

    def expected(self) -> str:
        """The type and range in words, e.g. 'a float in (0, 1)'."""
        words = {
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "str": "a string",
            "table": "a table",
            "list": "a list of numbers",
        }[self.kind]
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.length is not None:
            words = f"a list of {self.length} numbers"
        if self.min is not None or self.max is not None:
            left = "(" if self.exclusive or self.min is None else "["
            right = ")" if self.exclusive or self.max is None else "]"
            lo = "-inf" if self.min is None else f"{self.min:g}"
            hi = "inf" if self.max is None else f"{self.max:g}"
            words += f" in {left}{lo}, {hi}{right}"
        return words + self._unit() + (" (or leave it out)" if self.optional else "")

    def _unit(self) -> str:
        return f" {self.unit}" if self.unit else ""


def _toml_type(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        dict: "table",
        list: "array",
    }.get(type(value), type(value).__name__)
