"""The in-process pipeline: the stages of a pipeline file, wired per run.

:class:`Pipeline` is one callable to subscribe to the RunEngine. It is built
from a pipeline file (:mod:`bluesky_ptycho.pipelines`; the package's default
when none is given), validated before any scan starts. Its ``RunRouter``
builds a fresh set of stages for every ptycho run (a start document with
``"ptycho"`` metadata), connected as the file says, so per-run state lives in
per-run objects; every stage's output documents also go to
:meth:`Pipeline.subscribe` callbacks (a catalog writer, a viewer, a progress
bar).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from event_model import RunRouter

from ..pipelines import RAW, PipelineSpec, load_pipeline
from .base import Callback, Stage
from .export import CxiExport


@dataclass
class RunStages:
    """The stages built for one run, by their key in the pipeline file."""

    stages: dict[str, Stage]
    export: CxiExport | None = None
    log_handler: logging.Handler | None = field(default=None, repr=False)

    def __getitem__(self, key: str) -> Stage:
        return self.stages[key]

    def by_stage(self, name: str) -> Stage:
        """The (first) stage of registered name *name*, e.g. ``"reconstruction"``."""
        for s in self.stages.values():
            if s.stage_name == name:
                return s
        raise KeyError(f"this run's pipeline has no {name!r} stage; it has {list(self.stages)}")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every stage has finished its run; True if they all did in time."""
        return all(s.join(timeout) for s in self.stages.values())

    @property
    def errors(self) -> dict[str, list[str]]:
        """Errors each stage met (empty lists when all went well)."""
        return {k: list(s.errors) for k, s in self.stages.items()}


class Pipeline:
    """Subscribe to a RunEngine: ``RE.subscribe(Pipeline())``.

    Parameters
    ----------
    spec : PipelineSpec or path-like, optional
        A pipeline file or one already loaded; the package's default when None.
    device : {"cpu", "gpu"}, optional
        Overrides the file's ``pipeline.device``.
    output_dir : path-like, optional
        Where each run's CXI file goes (``scan_<scan_id>.cxi``) when the file
        says ``cxi = true``; no file when None.
    params : dict, optional
        Parameters to change, by stage key: ``{"reconstruction": {"final_iterations": 10}}``.
    log_dir : path-like, optional
        Each run's log goes to a file here (:func:`bluesky_ptycho.logs.run_log_handler`).
    metadata : dict, optional
        Added to the start document of every derived run the subscribers see
        (besides ``pipeline``: the file and parameters that made it).

    Raises
    ------
    PipelineFileError
        Before any scan, for anything wrong with the file or the parameters.
    """

    def __init__(
        self,
        spec: PipelineSpec | str | Path | None = None,
        *,
        device: str | None = None,
        output_dir: str | Path | None = None,
        params: dict[str, dict] | None = None,
        log_dir: str | Path | None = None,
        metadata: dict | None = None,
    ) -> None:
        if not isinstance(spec, PipelineSpec):
            spec = load_pipeline(spec)
        if (device is not None and device != spec.device) or params:
            spec = spec.changed(device, params)
        self.spec = spec
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.metadata = {"pipeline": spec.to_dict(), **(metadata or {})}
        self.runs: dict[str, RunStages] = {}
        self._subscribers: list[Callback] = []
        self._new_run = threading.Condition()
        self.router = RunRouter([self._factory])

    def __call__(self, name: str, doc: dict) -> Any:
        return self.router(name, doc)

    def subscribe(self, callback: Callback) -> None:
        """Send every document every stage emits to *callback(name, doc)*."""
        self._subscribers.append(callback)

    def _publish(self, name: str, doc: dict) -> None:
        if name == "start":
            doc = {**doc, **self.metadata}
        for cb in list(self._subscribers):
            cb(name, doc)

    def _factory(self, name: str, start: dict) -> tuple[list, list]:
        if "ptycho" not in start or "stage" in start:
            return [], []
        handler = None
        if self.log_dir is not None:
            from ..logs import run_log_handler

            handler = run_log_handler(self.log_dir, start)
        built: dict[str, Stage] = {}
        raw: list[Stage] = []
        for key, s in self.spec.stages.items():  # inputs come first
            stage = s.cls(device=self.spec.device, **s.params)
            for source in s.inputs:
                if source == RAW:
                    raw.append(stage)
                else:
                    built[source].subscribe(stage)
            stage.subscribe(self._publish)
            built[key] = stage
        export = None
        if self.output_dir is not None and self.spec.cxi:
            export = CxiExport(
                self.output_dir / f"scan_{start.get('scan_id', start['uid'][:8])}.cxi"
            )
            for stage in built.values():
                stage.subscribe(export)
        run = RunStages(built, export, handler)
        if handler is not None:
            threading.Thread(target=self._close_log, args=(run,), daemon=True).start()
        with self._new_run:
            self.runs[start["uid"]] = run
            self._new_run.notify_all()
        return raw, []

    @staticmethod
    def _close_log(run: RunStages) -> None:
        run.wait()
        from ..logs import close_run_log

        close_run_log(run.log_handler)

    def wait(self, uid: str, timeout: float | None = None) -> RunStages:
        """The stages of run *uid*, once all have finished (or *timeout* has passed)."""
        run = self.runs[uid]
        if not run.wait(timeout):
            raise TimeoutError(f"the pipeline of run {uid} did not finish within {timeout} s")
        return run
