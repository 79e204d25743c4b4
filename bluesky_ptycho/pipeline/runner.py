"""The in-process pipeline: the stages of a pipeline file, wired per run.

:class:`Pipeline` is one callable to subscribe to the RunEngine. It is built
from a pipeline file (:mod:`bluesky_ptycho.pipeline.files`; the package's default
when none is given), validated before any scan starts. Its ``RunRouter``
builds a fresh set of stages for every ptycho run (a start document with
``"ptycho"`` metadata), connected as the file says, so per-run state lives in
per-run objects; every stage's output documents also go to
:meth:`Pipeline.subscribe` callbacks (a catalog writer, a viewer, a progress
bar).

Stages whose table says ``where = "dask"`` spread over the workers of a
Dask client (given, or a local cluster the pipeline starts on first use).
The pipeline answers the control channel's commands: :meth:`Pipeline.status`,
:meth:`Pipeline.set`, :meth:`Pipeline.abort`, :meth:`Pipeline.clear`,
:meth:`Pipeline.reset`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from event_model import RunRouter

from bluesky_ptycho.callbacks.export import CxiExport
from bluesky_ptycho.pipeline.files import RAW, PipelineSpec, load_pipeline
from bluesky_ptycho.plugins.stage import Callback, Stage

log = logging.getLogger(__name__)


@dataclass(eq=False)
class RunStages(Mapping[str, Stage]):
    """The stages built for one run, by their key in the pipeline file.

    A mapping (``run["reconstruction"]``, ``list(run)`` gives the keys,
    ``run.items()``); :attr:`derived` gives the uids of the runs they derived.
    """

    stages: dict[str, Stage]
    export: CxiExport | None = None
    #: the stages that read the raw run (its frames): the ones back-pressure watches
    raw: list[Stage] = field(default_factory=list)
    log_handler: logging.Handler | None = field(default=None, repr=False)
    #: the raw run's scan id, and when its pipeline began (epoch seconds)
    scan_id: Any = None
    started: float = field(default_factory=time.time)

    def __getitem__(self, key: str) -> Stage:
        return self.stages[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    @property
    def derived(self) -> dict[str, str]:
        """The uid of the run each stage derived (by stage key; stages that made none are
        left out): what to open in the catalog, ``catalog[uid]``."""
        return {k: s.derived_uids[0] for k, s in self.stages.items() if s.derived_uids}

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

    @property
    def finished(self) -> bool:
        return all(s.done.is_set() for s in self.stages.values())


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
        Each run's log goes to a file here (:func:`bluesky_ptycho.storage.logs.run_log_handler`).
    metadata : dict, optional
        Added to the start document of every derived run the subscribers see
        (besides ``pipeline``: the file and parameters that made it).
    client : distributed.Client, optional
        Where ``where = "dask"`` stages run; without one, a pipeline that has
        such stages starts a local cluster now, before any scan
        (:func:`bluesky_ptycho.pipeline.dask.connect`).
    max_in_flight : int
        Frames a distributed stage has out on the workers at most.
    cxi_name : str, optional
        The CXI file's name in *output_dir* (default ``scan_<scan_id>.cxi``).
    keep_runs : int
        Finished runs whose stages (and results) are kept for :meth:`wait` and the
        status; older ones are let go, so a long-lived back-end's memory stays flat.

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
        client: Any = None,
        max_in_flight: int = 32,
        keep_runs: int = 16,
        cxi_name: str | None = None,
    ) -> None:
        if not isinstance(spec, PipelineSpec):
            spec = load_pipeline(spec)
        if (device is not None and device != spec.device) or params:
            spec = spec.changed(device, params)
        self.spec = spec
        self._file_spec = spec
        self.client = client
        self._own_cluster = False
        self.max_in_flight = max_in_flight
        if client is None and any(s.where == "dask" for s in spec.stages.values()):
            from bluesky_ptycho.pipeline.dask import connect

            self.client = connect()
            self._own_cluster = True
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.metadata = {"pipeline": spec.to_dict(), **(metadata or {})}
        self.runs: dict[str, RunStages] = {}
        self.keep_runs = keep_runs
        self.cxi_name = cxi_name
        self._open: set[str] = set()  # runs the router holds state for (no stop seen yet)
        self._subscribers: list[Callback] = []
        self._new_run = threading.Condition()
        self.router = RunRouter([self._factory])
        self._workers_seen: tuple[float, dict[str, Any]] = (-1e9, {})

    def __call__(self, name: str, doc: Mapping[str, Any]) -> Any:
        # event-model's RunRouter says it takes a dict; it reads the document, never changes it
        out = self.router(name, cast(dict, doc))
        if name == "stop":
            self._open.discard(doc.get("run_start"))
        return out

    def subscribe(self, callback: Callback) -> None:
        """Send every document every stage emits to *callback(name, doc)*."""
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callback) -> None:
        """Stop sending documents to *callback* (a viewer that closes)."""
        if callback in self._subscribers:
            self._subscribers.remove(callback)

    def _publish(self, name: str, doc: Mapping[str, Any]) -> None:
        if name == "start":
            doc = {**doc, **self.metadata}
        for cb in list(self._subscribers):
            try:  # one failing subscriber (a crashed viewer) must not starve the others
                cb(name, doc)
            except Exception:
                log.exception("pipeline subscriber %r failed on a %s document", cb, name)

    def _factory(self, name: str, start: dict) -> tuple[list, list]:
        if "ptycho" not in start or "stage" in start:
            return [], []
        handler = None
        if self.log_dir is not None:
            from bluesky_ptycho.storage.logs import run_log_handler

            handler = run_log_handler(self.log_dir, start, replay=self.replay)
        built: dict[str, Stage] = {}
        raw: list[Stage] = []
        for key, s in self.spec.stages.items():  # inputs come first
            stage = s.cls(device=self.spec.device, **s.params)
            if s.where == "dask":
                stage.distribute(self.client, self.max_in_flight)
            for source in s.inputs:
                if source == RAW:
                    raw.append(stage)
                else:
                    built[source].subscribe(stage)
            stage.subscribe(self._publish)
            built[key] = stage
        for stage in built.values():  # loops back: after the graph is built
            for producer in built.values():
                if producer is not stage and set(producer.outputs) & set(stage.feedback_inputs):
                    producer.subscribe(stage)
        export = None
        if self.output_dir is not None and self.spec.cxi:
            names = [s.stage_name for s in built.values()]
            after = next((n for n in ("reconstruction", "stxm", "frame_cleaning") if n in names),
                         names[-1])  # fmt: skip
            name = self.cxi_name or f"scan_{start.get('scan_id', start['uid'][:8])}.cxi"
            export = CxiExport(self.output_dir / name, after=after)
            for stage in built.values():
                stage.subscribe(export)
        for stage in built.values():
            stage.bind_run(start["uid"])
        run = RunStages(built, export, log_handler=handler, raw=raw, scan_id=start.get("scan_id"))
        if handler is not None:
            threading.Thread(
                target=self._close_log, args=(start["uid"], run, self.replay), daemon=True
            ).start()
        with self._new_run:
            self.runs[start["uid"]] = run
            self._open.add(start["uid"])
            self._let_go_of_old_runs()
            self._new_run.notify_all()
        return raw, []

    def _let_go_of_old_runs(self) -> None:
        finished = [uid for uid, r in self.runs.items() if r.finished]
        for uid in finished[: max(0, len(finished) - self.keep_runs)]:
            del self.runs[uid]

    def close(self) -> None:
        """Abort what still runs and shut down a Dask cluster the pipeline started."""
        self.abort("the pipeline was closed")
        if self._own_cluster and self.client is not None:
            from bluesky_ptycho.pipeline.dask import shutdown

            shutdown(self.client)
            self.client = None

    # -- control ---------------------------------------------------------------------
    def active(self) -> dict[str, RunStages]:
        """Runs whose stages are still working."""
        return {uid: r for uid, r in self.runs.items() if not r.finished}

    def backlog(self) -> int:
        """Backlog of the stages that take raw frames, over the runs in progress."""
        return sum(s.backlog() for r in self.active().values() for s in r.raw)

    def status(self) -> dict[str, Any]:
        """Every run's stages: frames in and out, backlog, rate, last error, heartbeat."""
        return {
            "time": time.time(),
            "runs": {
                uid: {
                    "finished": r.finished,
                    "scan_id": r.scan_id if isinstance(r.scan_id, int | str) else None,
                    "started": r.started,
                    "stages": {k: st.status() for k, st in r.stages.items()},
                }
                for uid, r in self.runs.items()
            },
            "params": {k: s.params for k, s in self.spec.stages.items()},
            "device": self.spec.device,
            "workers": self._workers(),
        }

    def _workers(self, max_age: float = 1.0) -> dict[str, Any]:
        """:func:`_workers`, asked of the workers at most once every *max_age* seconds (a
        status polled often would otherwise keep every worker busy answering)."""
        when, answer = self._workers_seen
        if self.client is not None and time.monotonic() - when < max_age:
            return answer
        answer = _workers(self.client)
        self._workers_seen = (time.monotonic(), answer)
        return answer

    def set(self, key: str, values: dict[str, Any]) -> dict[str, str]:
        """Change stage *key*'s parameters: from the next run on, and now where the
        stage can (its ``live_params``). Returns how each was applied; raises
        ``PipelineFileError``/``ValueError`` (nothing changed) for a bad one."""
        self.spec = self.spec.changed(params={key: values})
        self.metadata["pipeline"] = self.spec.to_dict()
        applied = {}
        for name, value in values.items():
            applied[name] = "from the next run"
            for run in self.active().values():
                stage = run.stages.get(key)
                if stage is not None and name in stage.live_params:
                    stage.set_live(name, value)
                    applied[name] = "now, and from the next run"
        return applied

    def abort(self, reason: str = "aborted by the operator") -> list[str]:
        """Abort every run in progress; return their uids."""
        uids = list(self.active())
        for uid in uids:
            for stage in self.runs[uid].stages.values():
                stage.abort(reason)
        return uids

    def clear(self) -> list[str]:
        """Forget finished runs (their results and frames); return their uids."""
        done = [uid for uid, r in self.runs.items() if r.finished]
        for uid in done:
            del self.runs[uid]
            self._forget_in_router(uid, "cleared")
        return done

    def close_run(self, uid: str, reason: str) -> None:
        """End run *uid* now (its stop will not come): stop its stages with ``exit_status``
        "fail" and *reason*, and let go of everything the run holds (threads, memory, log)."""
        run = self.runs.get(uid)
        if run is not None:
            for stage in run.stages.values():
                stage.abort(reason, exit_status="fail")
        self._forget_in_router(uid, reason)
        if run is not None and not run.wait(10):
            log.warning("run %s: some stages did not end within 10 s of being closed", uid)
        self.runs.pop(uid, None)

    def _forget_in_router(self, uid: str, reason: str) -> None:
        """The router keeps a run's callbacks until its stop: give it one that never came."""
        if uid in self._open:
            self._open.discard(uid)
            try:
                self.router("stop", {"run_start": uid, "uid": f"{uid}-closed", "time": time.time(),
                                     "exit_status": "fail", "reason": reason})  # fmt: skip
            except Exception:
                log.exception("run %s: the router could not let go of it", uid)

    def reset(self) -> None:
        """Ready for the next scan as if just started: abort, clear, and undo :meth:`set`."""
        self.abort("the pipeline was reset")
        for run in list(self.runs.values()):
            run.wait(10)
        for uid in list(self.runs):
            self._forget_in_router(uid, "the pipeline was reset")
        self.runs.clear()
        self.spec = self._file_spec
        self.metadata["pipeline"] = self.spec.to_dict()

    @property
    def replay(self) -> bool:
        """True where the pipeline processes stored runs again (``bluesky-ptycho replay``)."""
        return bool(self.metadata.get("replay"))

    @staticmethod
    def _close_log(uid: str, run: RunStages, replay: bool = False) -> None:
        run.wait()
        from bluesky_ptycho.storage.logs import close_run_log

        try:
            log_summary(uid, run, replay)
        except Exception:  # the summary only reports: it must not keep the log open
            log.exception("run %s: its summary could not be written", uid, extra={"run": uid})
        close_run_log(run.log_handler)

    def wait(self, uid: str, timeout: float | None = None) -> RunStages:
        """The stages of run *uid*, once all have finished (or *timeout* has passed): a
        :class:`RunStages`, a mapping by stage key (``list()`` gives the keys), whose
        ``derived`` gives the uids of the runs they derived."""
        run = self.runs[uid]
        if not run.wait(timeout):
            raise TimeoutError(f"the pipeline of run {uid} did not finish within {timeout} s")
        return run


def log_summary(uid: str, run: RunStages, replay: bool = False) -> None:
    """What run *uid* made, at the end of its log: a line per stage (its
    :meth:`~bluesky_ptycho.plugins.stage.Stage.summary`), the frames flagged, the CXI file,
    the derived runs, a warning per stage that met errors, and one line for the whole run
    (marked :data:`~bluesky_ptycho.storage.logs.SUMMARY`: a quiet ``serve`` shows it)."""
    from bluesky_ptycho.storage.logs import SUMMARY

    extra = {"run": uid}
    for key, stage in run.stages.items():
        log.info("%s: %s", key, stage.summary(), extra=extra)
    recon = next((s for s in run.stages.values() if s.stage_name == "reconstruction"), None)
    flags: dict[int, str] = dict(getattr(recon, "flags", {}) or {})
    if flags:
        shown = "; ".join(f"point {p}: {why}" for p, why in sorted(flags.items())[:10])
        more = f"; and {len(flags) - 10} more" if len(flags) > 10 else ""
        log.info("flagged frames: %s%s", shown, more, extra=extra)
    cxi = run.export.path if run.export is not None else None
    if cxi is not None:
        log.info("CXI written: %s", cxi, extra=extra)
    elif run.export is not None:
        log.warning("no CXI file written (expected %s)", run.export.target, extra=extra)
    derived = [f"{key} {u}" for key, s in run.stages.items() for u in s.derived_uids]
    log.info("derived runs: %s", ", ".join(derived) or "none", extra=extra)
    for key, stage in run.stages.items():
        if stage.errors:
            log.warning(
                "%s met %d error(s); the last: %s", key, len(stage.errors), stage.errors[-1],
                extra=extra,
            )  # fmt: skip
    what = [f"{_frames(run)} frame(s)"]
    if recon is not None:
        st = recon.status()
        what.append(f"{len(flags)} flagged")
        what.append(f"{st['iteration']} iteration(s)")
        what.append(f"data error {st['data_error']:.4g}")
        if st["resolution_nm"] == st["resolution_nm"]:
            what.append(f"resolution {st['resolution_nm']:.3g} nm")
    errors = sum(len(s.errors) for s in run.stages.values())
    if errors:
        what.append(f"{errors} error(s)")
    if cxi is not None:
        what.append(f"CXI {cxi}")
    log.info(
        "%s %s (scan %s) done in %.1f s: %s", "replay of run" if replay else "run", uid,
        run.scan_id, time.time() - run.started, ", ".join(what), extra={**extra, **SUMMARY},
    )  # fmt: skip


def _frames(run: RunStages) -> int:
    """The raw run's data frames the pipeline took: cleaned and flagged by the frame-cleaning
    stage, or (a pipeline without one) the most events a stage reading the raw run took."""
    clean = next((s for s in run.stages.values() if s.stage_name == "frame_cleaning"), None)
    if clean is not None and hasattr(clean, "n_cleaned"):
        return int(clean.n_cleaned + getattr(clean, "n_flagged", 0))
    return max((s.frames_in for s in run.raw), default=0)


def _workers(client: Any) -> dict[str, Any]:
    """The Dask workers: the scheduler's address, their count, their pids."""
    if client is None:
        return {}
    import os

    try:
        pids = client.run(os.getpid)  # {worker address: pid}
        address = client.scheduler.address
    except Exception as err:  # the scheduler went away: say so in the status
        return {"error": f"{type(err).__name__}: {err}"}
    return {"scheduler": address, "n": len(pids), "pids": pids}
