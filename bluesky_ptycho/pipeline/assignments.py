"""``STAGE.KEY=VALUE`` assignments from a command line or a text box, parsed in one place.

What ``--set`` takes in ``replay``, ``serve``, ``check``, ``raw2cxi``,
``control set`` and the viewer's Set box: a stage of the pipeline, one of its
parameters, and a value. A value is read as JSON when it parses (numbers,
true/false, lists, tables), else taken as a string. :func:`check_assignments`
holds them against a pipeline before anything runs, and a misspelled stage or
parameter is answered with the closest name (``did you mean …``).
``reconstruct``, which runs no pipeline, takes plain ``KEY=VALUE`` solver
options (:func:`parse_assignments`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bluesky_ptycho.core.params import unknown

if TYPE_CHECKING:
    from bluesky_ptycho.pipeline.files import PipelineSpec

#: how one assignment is written, for help texts and messages
GRAMMAR = "STAGE.KEY=VALUE"


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


def stage_assignments(
    pairs: list[str], flag: str = "--set", bare: str | None = None
) -> dict[str, dict[str, Any]]:
    """``["reconstruction.final_iterations=100"]`` → ``{"reconstruction": {"final_iterations": 100}}``.

    A pair without a stage (``KEY=VALUE``) is refused, unless *bare* names the
    stage such pairs meant (the older spelling of a command that had one).
    """
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_assignments(pairs, flag).items():
        stage, dot, name = key.partition(".")
        if not dot and bare is not None:
            stage, name = bare, key
        elif not dot or not stage or not name:
            raise ValueError(
                f"{flag} {key}=...: write {GRAMMAR}, e.g. "
                f"{flag} reconstruction.final_iterations=100"
            )
        out.setdefault(stage, {})[name] = value
    return out


def bare_keys(pairs: list[str]) -> list[str]:
    """The pairs written ``KEY=VALUE``, without a stage (the key has no dot)."""
    return [p for p in pairs if "." not in p.partition("=")[0]]


def check_assignments(
    params: dict[str, dict[str, Any]], spec: PipelineSpec, flag: str = "--set"
) -> None:
    """Refuse assignments to a stage *spec* does not have, or to a parameter it does not take.

    Raises ValueError listing each, e.g. ``--set reconstruction.final_iteration=3:
    unknown parameter 'final_iteration' of stage 'reconstruction'; did you mean
    'final_iterations'?``, and values of the wrong type or out of range (how
    values go together is checked when the pipeline is changed:
    :meth:`~bluesky_ptycho.pipeline.files.PipelineSpec.changed`).
    """
    found = []
    for stage, values in params.items():
        if stage not in spec.stages:
            found.append(
                f"{flag} {stage}.{next(iter(values))}=...: {spec.source} has no stage {stage!r}; "
                + unknown(stage, spec.stages, "stages")
            )
            continue
        cls = spec.stages[stage].cls
        known = [p.name for p in cls.params]
        for name, value in values.items():
            given = f"{flag} {stage}.{name}={json.dumps(value)}"
            if name not in known:
                found.append(
                    f"{given}: unknown parameter {name!r} of stage {stage!r}; "
                    + unknown(name, known, "parameters")
                )
            elif (why := cls.param_problems({name: value}).get(name)) is not None:
                found.append(f"{given}: {name} {why}")
    if found:
        raise ValueError("\n".join(found))
