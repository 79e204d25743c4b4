"""Pipeline files (TOML): which stages run, with what parameters, how they connect, and where.

:func:`load_pipeline` reads and validates one before any run starts; every
problem — a TOML syntax error, an unknown stage, a parameter of the wrong type
or out of range, an input nobody produces, a cycle — is reported with the
file, the key and the fix (:class:`PipelineFileError`). ``default.toml`` in
this package is the pipeline the demo and the IPython profile run; its
comments document the format.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bluesky_ptycho.core.params import close_to, unknown
from bluesky_ptycho.plugins import available_stages, load_stage
from bluesky_ptycho.plugins.stage import RAW

DEFAULT = Path(__file__).with_name("default.toml")
#: the back-end's default: frame cleaning spread over Dask workers
BACKEND = Path(__file__).with_name("backend.toml")
#: what `bluesky-ptycho raw2cxi` runs: cleaning and the probe estimate, no reconstruction
RAW2CXI = Path(__file__).with_name("raw2cxi.toml")
RAW_OUTPUTS = ("raw/primary", "raw/dark")
WHERE = ("process", "dask")
DEVICES = ("cpu", "gpu")
_STAGE_KEYS = {"stage", "inputs", "where", "params"}
_PIPELINE_KEYS = {"device", "cxi"}


class PipelineFileError(ValueError):
    """A pipeline file that cannot run; :attr:`problems` lists each as 'FILE: KEY ...; fix: ...'."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class StageSpec:
    """One ``[stages.KEY]`` table."""

    key: str
    stage: str
    inputs: list[str]
    where: str = "process"
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def cls(self) -> Any:
        return load_stage(self.stage)


@dataclass
class PipelineSpec:
    """A validated pipeline: its stages in an order where inputs come first."""

    source: str
    device: str
    cxi: bool
    stages: dict[str, StageSpec]

    def changed(
        self, device: str | None = None, params: dict[str, dict[str, Any]] | None = None
    ) -> PipelineSpec:
        """A copy on another *device* and with some stages' *params* changed
        (``{stage key: {name: value}}``), validated once."""
        stages = copy.deepcopy(self.stages)
        for key, values in (params or {}).items():
            if key not in stages:
                raise PipelineFileError(
                    [
                        f"{self.source}: no stage {key!r} to set parameters of; "
                        f"{unknown(key, stages, 'stages')}"
                    ]
                )
            stages[key].params.update(values)
        return _validated(replace(self, device=device or self.device, stages=stages))

    def to_dict(self) -> dict:
        """The pipeline as a plain dict (for a run's metadata)."""
        return {
            "source": self.source,
            "device": self.device,
            "stages": {
                k: {"stage": s.stage, "inputs": s.inputs, "params": s.params}
                for k, s in self.stages.items()
            },
        }


def load_pipeline(path: str | Path | None = None) -> PipelineSpec:
    """Read and validate the pipeline file at *path* (the package's default when None).

    Raises
    ------
    PipelineFileError
        Listing every problem with the file, the key and the fix.
    """
    path = Path(path) if path is not None else DEFAULT
    source = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineFileError(
            [f"{source}: no such file; give the path of a pipeline file (the default is {DEFAULT})"]
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise PipelineFileError(
            [f"{source}: not valid TOML ({err}); fix the syntax there"]
        ) from None
    return parse_pipeline(data, source)


def parse_pipeline(data: dict, source: str = "<pipeline>") -> PipelineSpec:
    """Validate a pipeline already read from TOML (see :func:`load_pipeline`)."""
    problems: list[str] = []
    for key in sorted(set(data) - {"pipeline", "stages"}):
        near = close_to(key, ("pipeline", "stages"))
        problems.append(
            f"{source}: [{key}] is not a section of a pipeline file; "
            + (
                f"did you mean [{near}]?"
                if near
                else "the sections are [pipeline] and [stages.NAME]"
            )
        )
    head = data.get("pipeline", {})
    if not isinstance(head, dict):
        problems.append(
            f"{source}: pipeline = {head!r:.60} must be a table: [pipeline] with device and cxi"
        )
        head = {}
    for key in sorted(set(head) - _PIPELINE_KEYS):
        problems.append(
            f"{source}: pipeline.{key} is not a setting; {unknown(key, _PIPELINE_KEYS, 'settings')}"
        )
    stages: dict[str, StageSpec] = {}
    tables = data.get("stages", {})
    if not isinstance(tables, dict):
        problems.append(
            f"{source}: stages = {tables!r:.60} must be tables, one per stage: [stages.NAME]"
        )
        tables = {}
    if not tables:
        problems.append(
            f"{source}: no [stages.NAME] tables; add one per stage "
            f"(installed: {', '.join(available_stages())})"
        )
    for key, table in tables.items():
        where = f"{source}: stages.{key}"
        if not isinstance(table, dict):
            problems.append(f"{where} must be a table ([stages.{key}])")
            continue
        for extra in sorted(set(table) - _STAGE_KEYS):
            near = close_to(extra, _STAGE_KEYS)
            problems.append(
                f"{where}.{extra} is not a stage setting; "
                + (
                    f"did you mean {near!r}?"
                    if near
                    else f"put parameters under stages.{key}.params (the settings are "
                    f"{sorted(_STAGE_KEYS)})"
                )
            )
        inputs = table.get("inputs", [])
        if not (isinstance(inputs, list) and all(isinstance(i, str) for i in inputs)):
            problems.append(
                f'{where}.inputs = {inputs!r} must be a list of stage names, e.g. inputs = ["raw"]'
            )
            inputs = []
        params = table.get("params", {})
        if not isinstance(params, dict):
            problems.append(f"{where}.params must be a table, e.g. params = {{ name = value }}")
            params = {}
        for name in ("stage", "where"):
            if name in table and not isinstance(table[name], str):
                problems.append(f"{where}.{name} = {table[name]!r:.60} must be a string")
        stage = table.get("stage", key)
        place = table.get("where", "process")
        stages[key] = StageSpec(
            key,
            stage if isinstance(stage, str) else key,
            list(inputs),
            place if isinstance(place, str) else "process",
            dict(params),
        )
    spec = PipelineSpec(source, head.get("device", "cpu"), head.get("cxi", True), stages)
    if problems:
        raise PipelineFileError(problems)
    return _validated(spec)


def _validated(spec: PipelineSpec) -> PipelineSpec:
    """Check stages, parameters, connections and acyclicity; order the stages."""
    src = spec.source
    problems: list[str] = []
    if spec.device not in DEVICES:
        problems.append(f"{src}: pipeline.device = {spec.device!r} is not one of {list(DEVICES)}")
    if not isinstance(spec.cxi, bool):
        problems.append(f"{src}: pipeline.cxi = {spec.cxi!r} must be true or false")
    classes: dict[str, Any] = {}
    for key, s in spec.stages.items():
        try:
            classes[key] = s.cls
        except LookupError:
            near = close_to(s.stage, available_stages())
            problems.append(
                f"{src}: stages.{key}: no stage named {s.stage!r} is installed; "
                + (f"did you mean {near!r}? " if near else "")
                + f"use one of {', '.join(available_stages())} (bluesky-ptycho stages describes "
                "them), or install the package that provides it"
            )
            continue
        if s.where not in WHERE:
            problems.append(
                f"{src}: stages.{key}.where = {s.where!r}: a stage can run in "
                f"{list(WHERE)} ('process': its own thread; 'dask': spread over "
                "the Dask workers, for stages that can)"
            )
        elif s.where == "dask" and not getattr(classes[key], "distributable", False):
            can = [n for n in available_stages() if getattr(load_stage(n), "distributable", False)]
            problems.append(
                f"{src}: stages.{key}.where = 'dask': stage {s.stage!r} cannot spread "
                f"over workers; use where = 'process' (stages that can: {can})"
            )
        for name, why in classes[key].param_problems(s.params).items():
            problems.append(f"{src}: stages.{key}.params.{name} = {s.params[name]!r} {why}")
    for key, s in spec.stages.items():
        for name in s.inputs:
            if name != RAW and name not in spec.stages:
                near = close_to(name, [RAW, *spec.stages])
                problems.append(
                    f"{src}: stages.{key}.inputs names {name!r}, which is not a stage "
                    f"of this file; "
                    + (f"did you mean {near!r}?" if near else "")
                    + f"{' (' if near else ''}use {RAW!r} or one of {list(spec.stages)}"
                    + (")" if near else "")
                )
    if problems:
        raise PipelineFileError(problems)
    problems += _missing_inputs(spec, classes)
    order, cycle = _order(spec)
    if cycle:
        problems.append(
            f"{src}: stages {' ← '.join(cycle)} read from each other in a cycle "
            "(← : takes input from); remove one of these inputs so that data flows "
            "one way"
        )
    if problems:
        raise PipelineFileError(problems)
    for key in order:  # what only the stage itself can judge (solver options, say)
        try:
            classes[key].check_params(device=spec.device, **spec.stages[key].params)
        except (ValueError, TypeError, RuntimeError, ImportError) as err:
            problems.append(f"{src}: stages.{key}.params: {err}")
    if problems:
        raise PipelineFileError(problems)
    return replace(spec, stages={k: spec.stages[k] for k in order})


def _outputs(classes: dict[str, Any], key: str) -> tuple[str, ...]:
    return RAW_OUTPUTS if key == RAW else classes[key].outputs


def _missing_inputs(spec: PipelineSpec, classes: dict[str, Any]) -> list[str]:
    problems = []
    for key, s in spec.stages.items():
        if not s.inputs:
            problems.append(
                f"{spec.source}: stages.{key} has no inputs, so it would never run; "
                f'give it some, e.g. inputs = ["raw"]'
            )
            continue
        offered = {o for name in s.inputs for o in _outputs(classes, name)}
        for need in classes[key].required_inputs(s.params):
            if need in offered:
                continue
            makers = [k for k in [RAW, *spec.stages] if need in _outputs(classes, k)]
            fix = (
                f"add {makers[0]!r} to stages.{key}.inputs"
                if makers
                else f"no stage in the file produces it: add a [stages.{need.split('/')[0]}] table"
            )
            problems.append(
                f"{spec.source}: stages.{key} needs {need}, which none of its inputs "
                f"{s.inputs} produce; {fix}"
            )
    return problems


def _order(spec: PipelineSpec) -> tuple[list[str], list[str]]:
    """Stage keys with inputs first, and a cycle (keys) if there is one."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1: being visited, 2: done
    path: list[str] = []

    def visit(key: str) -> list[str]:
        if state.get(key) == 2:
            return []
        if state.get(key) == 1:
            return [*path[path.index(key) :], key]
        state[key] = 1
        path.append(key)
        for name in spec.stages[key].inputs:
            if name != RAW and (cycle := visit(name)):
                return cycle
        path.pop()
        state[key] = 2
        order.append(key)
        return []

    for key in spec.stages:
        if cycle := visit(key):
            return order, cycle
    return order, []
