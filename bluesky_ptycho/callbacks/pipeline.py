"""The in-process pipeline: dark statistics → frame cleaning → STXM/probe → reconstruction.

:class:`Pipeline` is one callable to subscribe to the RunEngine. Its
``RunRouter`` builds a fresh chain of stages for every ptycho run (a start
document with ``"ptycho"`` metadata), so per-run state lives in per-run
objects, and sends every stage's output documents to :meth:`Pipeline.subscribe`
callbacks as well (a viewer, a catalog writer, a progress bar).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from event_model import RunRouter

from ..plugins import load_stage
from .base import Callback, Stage
from .export import CxiExport


@dataclass
class RunStages:
    """The stages built for one run."""

    dark: Stage
    clean: Stage
    recon: Stage
    stxm: Stage | None = None
    export: CxiExport | None = None
    stages: list[Stage] = field(default_factory=list)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every stage has finished its run; True if they all did in time."""
        return all(s.join(timeout) for s in self.stages)

    @property
    def errors(self) -> dict[str, list[str]]:
        """Errors each stage met (empty lists when all went well)."""
        return {s.stage_name: list(s.errors) for s in self.stages}


class Pipeline:
    """Subscribe to a RunEngine: ``RE.subscribe(Pipeline(...))``.

    Parameters
    ----------
    device : {"cpu", "gpu"}
        Array backend of every stage.
    output_dir : path-like, optional
        Where each run's CXI file goes (``<scan_id or uid>.cxi``); no file when None.
    dark, cleaning, stxm, reconstruction : dict, optional
        Parameters of each stage (see the stage classes).
    """

    def __init__(
        self,
        device: str = "cpu",
        output_dir: str | Path | None = None,
        dark: dict | None = None,
        cleaning: dict | None = None,
        reconstruction: dict | None = None,
        stxm: dict | None = None,
    ) -> None:
        self.device = device
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.params = {
            "dark_statistics": dict(dark or {}),
            "frame_cleaning": dict(cleaning or {}),
            "stxm": dict(stxm or {}),
            "reconstruction": dict(reconstruction or {}),
        }
        # load the stages and check their parameters now, before any scan starts
        self.classes = {name: load_stage(name) for name in self.params}
        for name, cls in self.classes.items():
            cls.check_params(device=device, **self.params[name])
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
        for cb in list(self._subscribers):
            cb(name, doc)

    def _factory(self, name: str, start: dict) -> tuple[list, list]:
        if "ptycho" not in start or "stage" in start:
            return [], []
        dark = self.classes["dark_statistics"](device=self.device, **self.params["dark_statistics"])
        clean = self.classes["frame_cleaning"](device=self.device, **self.params["frame_cleaning"])
        stxm = self.classes["stxm"](device=self.device, **self.params["stxm"])
        recon = self.classes["reconstruction"](device=self.device, **self.params["reconstruction"])
        dark.subscribe(clean)
        clean.subscribe(recon)
        clean.subscribe(stxm)
        stxm.subscribe(recon)
        export = None
        if self.output_dir is not None:
            export = CxiExport(
                self.output_dir / f"scan_{start.get('scan_id', start['uid'][:8])}.cxi"
            )
            clean.subscribe(export)
            recon.subscribe(export)
        stages = [dark, clean, stxm, recon]
        for s in stages:
            s.subscribe(self._publish)
        with self._new_run:
            self.runs[start["uid"]] = RunStages(dark, clean, recon, stxm, export, stages)
            self._new_run.notify_all()
        return [dark, clean], []

    def wait(self, uid: str, timeout: float | None = None) -> RunStages:
        """The stages of run *uid*, once all have finished (or *timeout* has passed)."""
        run = self.runs[uid]
        if not run.wait(timeout):
            raise TimeoutError(f"the pipeline of run {uid} did not finish within {timeout} s")
        return run
