"""Declared parameters: each setting is declared once, and everything else derives from that.

A :class:`Param` holds what there is to know about one setting: its TOML type,
default, unit, range, choices and a line of documentation. Settings classes
(the cleaning settings, the solvers' options, …) declare their fields with
:func:`setting` and subclass :class:`Declared`; from those declarations come

- the check when a settings object is made (every field against its
  declaration, non-finite numbers refused, then the class's own
  :meth:`Declared.check` for rules that tie fields together);
- the ``Attributes`` section of the class's docstring;
- a stage's ``params`` (:func:`params_of`), and with them the checks of a
  pipeline file, of ``control set``, of ``--set`` on the command line, and
  the ``bluesky-ptycho stages`` listing.

Pure Python: no framework, no NumPy needed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, dataclass_transform

KINDS = ("int", "float", "bool", "str", "table", "list")
_PARAM = "bluesky_ptycho.param"


@dataclass(frozen=True)
class Param:
    """One declared parameter.

    Attributes
    ----------
    name : str
    kind : {"int", "float", "bool", "str", "table", "list"}
        Its TOML type (``float`` also takes integers; ``list`` of numbers).
    default : Any
        None where the run's metadata supplies it (*optional* is then True).
    doc : str
        What it does, for ``bluesky-ptycho stages`` and the class's docstring.
    unit : str
    min, max : float, optional
        Bounds, inclusive unless *exclusive* says otherwise. Every number a
        user can set has both (an iteration count of 2**63 is a mistake, not
        a wish).
    exclusive : bool or {"min", "max"}
        True: both bounds are excluded; ``"min"`` or ``"max"``: that one.
    choices : tuple, optional
        The allowed values of a string.
    length : int, optional
        The length of a list.
    optional : bool
        None is allowed (taken from the run's metadata, or "automatic").
    """

    name: str
    kind: str
    default: Any
    doc: str
    unit: str = ""
    min: float | None = None
    max: float | None = None
    exclusive: bool | Literal["min", "max"] = False
    choices: tuple | None = None
    length: int | None = None
    optional: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Param {self.name!r}: kind {self.kind!r} is not one of {KINDS}")

    def problem(self, value: Any) -> str | None:
        """What is wrong with *value* for this parameter (in words), or None when it is fine."""
        if value is None:
            return None if self.optional else f"must be given ({self.expected()})"
        if self.kind == "table" and dataclasses.is_dataclass(value):
            return None  # already a typed value (a Beamstop, say)
        kind_ok = {
            "int": _is_int(value),
            "float": _is_number(value),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "table": isinstance(value, Mapping),
            "list": isinstance(value, list | tuple) and all(_is_number(v) for v in value),
        }[self.kind]
        if not kind_ok:
            return f"is a {_toml_type(value)}; expected {self.expected()}"
        if self.choices is not None and value not in self.choices:
            near = close_to(value, map(str, self.choices)) if isinstance(value, str) else None
            return f"is not one of {list(self.choices)}" + (
                f"; did you mean {near!r}?" if near is not None else ""
            )
        if self.length is not None and len(value) != self.length:
            return f"has {len(value)} values; expected {self.length}"
        numbers = (
            [value] if self.kind in ("int", "float") else list(value) if self.kind == "list" else []
        )
        for v in numbers:
            if not math.isfinite(v):
                return f"is not a finite number; expected {self.expected()}"
            lo_open = self.exclusive is True or self.exclusive == "min"
            hi_open = self.exclusive is True or self.exclusive == "max"
            if self.min is not None and (v <= self.min if lo_open else v < self.min):
                return (
                    f"{'holds a value ' if self.kind == 'list' else ''}is "
                    f"{'at or ' if lo_open else ''}below the minimum {_num(self.min)}{self._unit()}"
                )
            if self.max is not None and (v >= self.max if hi_open else v > self.max):
                return (
                    f"{'holds a value ' if self.kind == 'list' else ''}is "
                    f"{'at or ' if hi_open else ''}above the maximum {_num(self.max)}{self._unit()}"
                )
        return None

    def expected(self) -> str:
        """The type and range in words, e.g. 'a number in (0, 1]'."""
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
            lo_open = self.exclusive is True or self.exclusive == "min" or self.min is None
            hi_open = self.exclusive is True or self.exclusive == "max" or self.max is None
            lo = "-inf" if self.min is None else _num(self.min)
            hi = "inf" if self.max is None else _num(self.max)
            words += f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        return words + self._unit() + (" (or leave it out)" if self.optional else "")

    def _unit(self) -> str:
        return f" {self.unit}" if self.unit else ""


def _num(v: float) -> str:
    """A bound as people write it: 1000000 and 65535 as integers, 5e-08 as it is."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e16 else f"{v:g}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _toml_type(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        dict: "table",
        list: "array",
    }.get(type(value), type(value).__name__)


def setting(
    default: Any,
    doc: str,
    *,
    kind: str | None = None,
    unit: str = "",
    min: float | None = None,
    max: float | None = None,
    exclusive: bool | Literal["min", "max"] = False,
    choices: tuple | None = None,
    length: int | None = None,
    optional: bool = False,
) -> Any:
    """A dataclass field declared once: its default and everything :class:`Param` holds.

    *kind* is taken from the default's type when not given (give it when the
    default is None).
    """
    if kind is None:
        kind = _kind_of(default)
    param = Param("", kind, default, doc, unit, min, max, exclusive, choices, length, optional)
    meta = {_PARAM: param}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _kind_of(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, list | tuple):
        return "list"
    if isinstance(default, Mapping) or dataclasses.is_dataclass(default):
        return "table"
    raise TypeError(f"setting({default!r}): give kind= (the default does not say)")


def declared(cls: type) -> tuple[Param, ...]:
    """The parameters a settings class declares, named, in field order."""
    out = []
    for f in dataclasses.fields(cls):
        p = f.metadata.get(_PARAM)
        if p is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else p.default
        out.append(dataclasses.replace(p, name=f.name, default=_plain(default)))
    return tuple(out)


def params_of(
    cls: type,
    *,
    from_metadata: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> tuple[Param, ...]:
    """A stage's parameters made from a settings class's declarations.

    Those named in *from_metadata* become optional with no default (the run's
    metadata gives them unless the pipeline says otherwise); those in
    *exclude* are left out.
    """
    meta, skip = set(from_metadata), set(exclude)
    return tuple(
        dataclasses.replace(p, default=None, optional=True) if p.name in meta else p
        for p in declared(cls)
        if p.name not in skip
    )


def close_to(name: str, known: Iterable[str]) -> str | None:
    """The one of *known* that *name* most likely misspells, or None when none is close."""
    found = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


def unknown(name: str, known: Iterable[str], what: str = "names") -> str:
    """The fix for an unknown *name*: ``did you mean 'x'?`` when one of *known* is close, else
    the whole list (``the names are [...]``)."""
    known = sorted(known)
    near = close_to(name, known)
    return f"did you mean {near!r}?" if near is not None else f"the {what} are {known}"


def problems(params: Iterable[Param], values: Mapping[str, Any], owner: str) -> dict[str, str]:
    """What is wrong with *values* by name, against *params* (unknown names too); empty: fine.

    An unknown name is answered with the closest known one (``did you mean
    'final_iterations'?``), or the list of them when none is close.
    """
    known = {p.name: p for p in params}
    out = {}
    for name, value in values.items():
        if name not in known:
            out[name] = f"is not a parameter of {owner}; {unknown(name, known, 'parameters')}"
        elif (why := known[name].problem(value)) is not None:
            out[name] = why
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


class Declared:
    """Base of a settings dataclass whose fields are declared with :func:`setting`.

    Making one checks every field against its declaration and then calls
    :meth:`check`; a bad value raises ``ValueError`` naming the class, the
    field, the value and what is expected. Decorate subclasses with
    :func:`settings` (a dataclass whose docstring lists the declarations).
    """

    def __post_init__(self) -> None:
        self.normalize()
        name = type(self).__name__
        found = [
            f"{name}.{p.name}={getattr(self, p.name)!r} {why}"
            for p in declared(type(self))
            if (why := p.problem(_plain(getattr(self, p.name)))) is not None
        ]
        if found:
            raise ValueError("; ".join(found))
        self.check()

    def normalize(self) -> None:
        """Hook: turn given values into their typed form (a dict into a Beamstop, say)."""

    def check(self) -> None:
        """Hook: rules between fields; raise ``ValueError`` naming them."""

    def _set(self, name: str, value: Any) -> None:
        """Set a field during :meth:`normalize`, frozen dataclass or not."""
        object.__setattr__(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (for documents and TOML)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass_transform(field_specifiers=(dataclasses.field, setting))
def settings(cls: type | None = None, *, frozen: bool = False) -> Any:
    """Class decorator: a dataclass whose docstring gains the ``Attributes`` made from its
    declarations (use on :class:`Declared` subclasses)."""

    def wrap(c: type) -> type:
        return _document(dataclass(frozen=frozen)(c))

    return wrap if cls is None else wrap(cls)


def _document(cls: type) -> type:
    """Append the ``Attributes`` section made from the declarations to *cls*'s docstring."""
    lines = ["", "    Attributes", "    ----------"]
    for p in declared(cls):
        kind = {"int": "int", "float": "float", "bool": "bool", "str": "str", "table": "dict",
                "list": "list"}[p.kind]  # fmt: skip
        lines.append(f"    {p.name} : {kind}")
        lines.append(f"        {p.doc} Default {p.default!r}; {p.expected()}.")
    cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"
    return cls
