"""What every processing stage shares: a worker thread, and output as a derived run.

A stage is an ``event_model.DocumentRouter``. Calling it (``stage(name, doc)``,
as the RunEngine or a RunRouter does) only puts the document on the stage's
queue and returns at once; the stage's own thread takes documents off the
queue in order and dispatches them by method name (``start``, ``descriptor``,
``event_page``, ``stream_resource``, ``stream_datum``, ``stop``). So a slow
stage never stretches the scan, and an error in a stage is logged and kept
in :attr:`Stage.errors`, never raised into the RunEngine.

Every stage reports :meth:`Stage.status` (frames in and out, backlog, rate,
last error, heartbeat: the last time its thread went round), can be aborted
(:meth:`Stage.abort`: queued documents dropped, its derived runs stopped
with ``exit_status="abort"``) and takes the parameters it names in
:attr:`Stage.live_params` while it runs (:meth:`Stage.set_live`).

A stage's results are documents of a *derived run* (:class:`DerivedRun`)
whose start document names the source run (``source_run``), the stage
(``stage``) and the scan's number (``source_scan_id``: a derived run has no
``scan_id`` of its own, so a look-up by scan number finds the scan only);
:meth:`Stage.subscribe` connects the next stage or any sink.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, cast

import numpy as np
from event_model import DocumentRouter, compose_run
from event_model.documents import (
    DatumPage,
    Event,
    EventDescriptor,
    EventPage,
    Resource,
    RunStart,
    RunStop,
    StreamDatum,
    StreamResource,
)

from bluesky_ptycho.core.params import Param, problems
from bluesky_ptycho.threads import Worker, bind_run

ExitStatus = Literal["success", "abort", "fail"]
#: what receives documents: ``callback(name, doc)``
Callback = Callable[[str, Mapping[str, Any]], Any]
#: what a stage's inputs call the RunEngine's own run (``"raw"``, ``"raw/dark"``)
RAW = "raw"
#: seconds the rates in :meth:`Stage.status` are taken over: long enough that a stage which
#: emits in batches (frame cleaning sends 8 frames every few seconds) reads a steady rate,
#: not 0 between batches
RATE_WINDOW_S = 10.0


class Stage(DocumentRouter):
    """Base class of processing stages (see the module docstring).

    Subclasses set :attr:`stage_name`, describe themselves for the registry
    (:attr:`inputs`, :attr:`optional_inputs`, :attr:`outputs`, :attr:`params`;
    see :mod:`bluesky_ptycho.plugins`) and implement document methods; a
    stage with work of its own between documents (iterations) overrides
    :meth:`has_work` and :meth:`work`.
    """

    stage_name: ClassVar[str] = "stage"
    inputs: ClassVar[tuple[str, ...]] = ()
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    params: ClassVar[tuple[Param, ...]] = ()
    #: outputs of later stages this stage takes back when the pipeline has their producer
    #: (``"quality/verdict"``: the reconstruction drops frames the monitor judged bad); they
    #: close a loop, so they are wired after the stages and are not part of the input graph
    feedback_inputs: ClassVar[tuple[str, ...]] = ()
    #: parameters that may change while a run is in progress (see :meth:`set_live`)
    live_params: ClassVar[tuple[str, ...]] = ()
    #: True where the stage can spread its work over Dask workers (``where = "dask"``)
    distributable: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.log = logging.getLogger(f"bluesky_ptycho.stages.{self.stage_name}")
        self._subscribers: list[Callback] = []
        self.errors: list[str] = []
        self.frames_in = 0
        self.frames_out = 0
        self.aborted = False
        self.run_uid: str | None = None
        self._derived: list[DerivedRun] = []
        # (time, frames in, frames out) at the status polls of the last RATE_WINDOW_S seconds,
        # the oldest one before them kept as the anchor the rates are taken from
        self._samples = collections.deque([(time.monotonic(), 0, 0)])
        self._rates = (0.0, 0.0)
        self._rates_lock = threading.Lock()
        self._worker = Worker(
            f"stage-{self.stage_name}",
            self._dispatch_item,
            idle=self._own_work,
            poll=lambda: 0 if self.has_work() and not self.aborted else 1.0,
            log=self.log,
            on_error=lambda err: self.errors.append(f"{type(err).__name__}: {err}"),
        )
        self.done = self._worker.done
        # the raw run's streams the stage takes (None: all of them); the events of the others
        # are left at the door, not queued for the stage's thread to ignore one by one
        raw = {i.split("/", 1)[1] for i in (*self.inputs, *self.optional_inputs)
               if i.startswith(f"{RAW}/")}  # fmt: skip
        self._raw_streams = frozenset(raw) if raw and RAW not in self.inputs else None
        self._raw_runs: set[str] = set()
        self._not_taken: set[str] = set()  # descriptors of the raw streams not taken

    @classmethod
    def required_inputs(cls, params: dict[str, Any]) -> tuple[str, ...]:
        """The inputs the stage needs with these parameters (more than :attr:`inputs` if some
        parameter makes an optional input necessary)."""
        return cls.inputs

    @classmethod
    def param_problems(cls, params: dict[str, Any]) -> dict[str, str]:
        """What is wrong with *params* by name, checked against :attr:`params` (empty: fine)."""
        return problems(cls.params, params, repr(cls.stage_name))

    @classmethod
    def check_params(cls, device: str = "cpu", **params: Any) -> None:
        """Refuse unknown or out-of-range parameters now, before any run starts.

        Checks *params* against the declared :attr:`params`, then how they go
        together (:meth:`validate`); builds no stage and starts no thread.
        Raises ``ValueError`` naming the stage and the parameter.
        """
        found = cls.param_problems(params)
        if found:
            raise ValueError(
                "; ".join(
                    f"stage {cls.stage_name!r}: {k}={params[k]!r} {why}" for k, why in found.items()
                )
            )
        cls.validate(params)

    @classmethod
    def nested_params(cls, name: str) -> dict[str, tuple[Param, ...]]:
        """The keys a ``table`` parameter *name* takes, by group (e.g. each solver's options),
        for the ``stages`` listing; empty when it takes none in particular."""
        return {}

    @classmethod
    def validate(cls, params: dict[str, Any]) -> None:
        """Hook: rules between parameters (each already fine on its own); raise ``ValueError``
        naming the stage and what to change. Must not build the stage."""

    # -- wiring ---------------------------------------------------------------
    def subscribe(self, callback: Callback) -> None:
        """Send this stage's output documents to *callback(name, doc)*."""
        self._subscribers.append(callback)

    def publish(self, name: str, doc: Mapping[str, Any]) -> None:
        """Send one output document to every subscriber (errors there are logged)."""
        for cb in list(self._subscribers):
            try:
                cb(name, doc)
            except Exception:
                self.log.exception("subscriber %r failed on %s document", cb, name)

    # -- the RunEngine side: enqueue and return --------------------------------
    # Takes any map (a :data:`Callback`); hands back the document it was given (event-model's
    # signature says a dict: here it is whatever the caller passed).
    def __call__(
        self, name: str, doc: Mapping[str, Any], validate: bool = False
    ) -> tuple[str, Any]:
        if self.aborted:
            return name, doc
        if self._raw_streams is not None:
            if name == "start" and "stage" not in doc:
                self._raw_runs.add(doc["uid"])
            elif name == "descriptor":
                if (doc.get("run_start") in self._raw_runs
                        and doc.get("name") not in self._raw_streams):  # fmt: skip
                    self._not_taken.add(doc["uid"])
            elif name in ("event", "event_page", "stream_datum"):
                if doc.get("descriptor") in self._not_taken:
                    return name, doc
        if name == "event":
            self.frames_in += 1
        elif name == "event_page":
            self.frames_in += len(doc["seq_num"])
        self._worker.put((name, doc))
        return name, doc

    # -- control ------------------------------------------------------------------
    def backlog(self) -> int:
        """Documents queued plus frames the stage holds but has not finished."""
        return self._worker.pending + self.held_frames()

    def held_frames(self) -> int:
        """Frames taken in and not yet done with (stages that batch override this)."""
        return 0

    def status(self) -> dict[str, Any]:
        """Frames in and out, backlog, rates in and out (frames/s), last error, heartbeat age (s).

        The rates are the change of the counts over the last :data:`RATE_WINDOW_S` seconds of
        status polls (over the time since the previous poll when polls are further apart, since
        the stage began at the first): ``rate`` is the output's, ``rate_in`` the input's.
        """
        rate_in, rate = self._rate_now()
        return {
            "stage": self.stage_name,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "backlog": self.backlog(),
            "rate": round(rate, 2),
            "rate_in": round(rate_in, 2),
            "errors": len(self.errors),
            "last_error": self.errors[-1] if self.errors else "",
            "heartbeat_age": round(time.time() - self._worker.heartbeat, 2),
            "state": "aborted" if self.aborted else ("done" if self.done.is_set() else "running"),
        }

    def _rate_now(self) -> tuple[float, float]:
        """(frames in, frames out) per second over the window (see :meth:`status`)."""
        now, n_in, n_out = time.monotonic(), self.frames_in, self.frames_out
        with self._rates_lock:  # the server's loop and a viewer may both poll
            samples = self._samples
            while len(samples) > 1 and samples[1][0] <= now - RATE_WINDOW_S:
                samples.popleft()
            t, then_in, then_out = samples[0]
            if now - t >= 0.5:  # polls closer than that keep the last rates
                self._rates = ((n_in - then_in) / (now - t), (n_out - then_out) / (now - t))
            if now - samples[-1][0] >= 0.25:
                samples.append((now, n_in, n_out))
            return self._rates

    def summary(self) -> str:
        """One line on what the stage did in its run, for the end of the run's log (stages
        say it in their own terms: frames cleaned, iterations, …)."""
        return f"{self.frames_in} event(s) in, {self.frames_out} out"

    @property
    def derived_uids(self) -> list[str]:
        """The uids of the derived runs the stage has emitted (for this run)."""
        return [d.uid for d in self._derived]

    def set_live(self, name: str, value: Any) -> None:
        """Change parameter *name* of the run in progress (one of :attr:`live_params`).

        The value is checked against the declared parameter; it takes effect
        on the stage's thread, between documents.
        """
        if name not in self.live_params:
            raise ValueError(
                f"stage {self.stage_name!r}: {name} cannot change during a run (it can: "
                f"{list(self.live_params) or 'nothing'}); it applies from the next run"
            )
        problems = self.param_problems({name: value})
        if problems:
            raise ValueError(f"stage {self.stage_name!r}: {name}={value!r} {problems[name]}")
        self.call_soon(lambda: self._apply_live(name, value))

    def _apply_live(self, name: str, value: Any) -> None:
        setattr(self, name, value)
        self.log.info("%s set to %r during the run", name, value)

    def abort(
        self, reason: str = "aborted by the operator", exit_status: ExitStatus = "abort"
    ) -> None:
        """Drop what is queued, stop the derived runs (``exit_status`` "abort", or "fail" when
        the back-end closes a run), end the thread."""
        self.aborted = True
        self._worker.drain()
        self.call_soon(lambda: self._abort(reason, exit_status))
        self.close()

    def _abort(self, reason: str, exit_status: ExitStatus = "abort") -> None:
        self.on_abort()
        for run in self._derived:
            run.stop(exit_status, reason)

    def bind_run(self, uid: str) -> None:
        """Say which run this stage works for: its thread's log messages go to that run's log."""
        self.run_uid = uid
        self.call_soon(lambda: bind_run(uid))

    def on_abort(self) -> None:
        """Hook: give back what the run held (workers, solver threads)."""

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run *fn()* on the stage's thread, in turn with the documents (from any thread)."""
        self._worker.call_soon(fn)

    def close(self) -> None:
        """Stop the worker after the documents already queued."""
        self._worker.close()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the stage has finished its run; True if it did in time."""
        return self.done.wait(timeout)

    # -- the worker side -----------------------------------------------------------
    def has_work(self) -> bool:
        """True while the stage has work of its own to do between documents."""
        return False

    def work(self) -> None:
        """One slice of the stage's own work (an iteration, say)."""

    def _own_work(self) -> None:
        if self.has_work() and not self.aborted:
            self.work()

    def _dispatch_item(self, item: tuple[str, Mapping[str, Any]]) -> None:
        name, doc = item
        # event-model's _dispatch only reads the document (it calls the method named *name*)
        self._dispatch(name, cast(dict, doc), False)
        if name == "start":
            self.log.debug("run %s (%s) in", doc["uid"], doc.get("stage", "raw"))
        elif name == "stop":
            # the run's summary says how it went; here only what went wrong
            status = doc.get("exit_status")
            level = logging.WARNING if self.errors or status != "success" else logging.DEBUG
            self.log.log(
                level, "run %s stopped (%s); %d error(s) in this stage so far%s",
                doc["run_start"], status, len(self.errors),
                f", the last: {self.errors[-1]}" if self.errors else "",
            )  # fmt: skip

    # Documents a stage does not care about pass by quietly. (Overrides return None; the
    # base returns Any so that event-model's signatures, which return documents, allow it.
    # mypy checks an override against DocumentRouter's too, and there event_page alone says
    # it returns an EventPage, not "| None" as its siblings do, though its _dispatch takes
    # None alike: stages' event_page overrides carry "type: ignore[override]" for that.)
    def start(self, doc: RunStart) -> Any:
        return None

    def descriptor(self, doc: EventDescriptor) -> Any:
        return None

    def event_page(self, doc: EventPage) -> Any:
        return None

    def stream_resource(self, doc: StreamResource) -> Any:
        return None

    def stream_datum(self, doc: StreamDatum) -> Any:
        return None

    def resource(self, doc: Resource) -> Any:
        return None

    def datum_page(self, doc: DatumPage) -> Any:
        return None

    def stop(self, doc: RunStop) -> Any:
        return None


def metadata(doc: Mapping[str, Any], key: str = "ptycho") -> dict[str, Any]:
    """A start document's block of metadata *key* (the ``"ptycho"`` one by default) as a
    plain dict; empty when the document has none (or not a map)."""
    block = doc.get(key)
    return dict(block) if isinstance(block, Mapping) else {}


def array_key(arr: np.ndarray, source: str) -> dict:
    """A descriptor data key for an array value."""
    a = np.asarray(arr)
    return {"source": source, "dtype": "array", "shape": list(a.shape), "dtype_numpy": a.dtype.str}


def scalar_key(value: Any, source: str) -> dict:
    """A descriptor data key for a scalar value."""
    if isinstance(value, bool | np.bool_):
        return {"source": source, "dtype": "boolean", "shape": []}
    if isinstance(value, int | np.integer):
        return {"source": source, "dtype": "integer", "shape": []}
    if isinstance(value, float | np.floating):
        return {"source": source, "dtype": "number", "shape": []}
    return {"source": source, "dtype": "string", "shape": []}


class DerivedRun:
    """The run a stage emits for one source run.

    Parameters
    ----------
    stage : Stage
        Publishes the documents.
    source_start : dict
        Start document of the source run (its uid is recorded).
    metadata : dict
        Extra start metadata (what downstream stages need).
    """

    def __init__(
        self,
        stage: Stage,
        source_start: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.stage = stage
        stage._derived.append(self)
        md = {
            "source_run": source_start["uid"],
            "stage": stage.stage_name,
            # the scan's number, not as scan_id: a derived run is no scan of its own
            "source_scan_id": source_start.get("scan_id", source_start.get("source_scan_id")),
            **(metadata or {}),
        }
        md = {k: v for k, v in md.items() if v is not None}
        self._bundle = compose_run(metadata=md)
        #: the derived run's start document (with its ``source_run``, ``stage`` and metadata)
        self.start_doc: dict[str, Any] = dict(self._bundle.start_doc)
        self._descriptors: dict[str, Any] = {}
        self.stopped = False
        stage.publish("start", self.start_doc)

    @property
    def uid(self) -> str:
        return self.start_doc["uid"]

    def event(self, stream: str, data: dict[str, Any]) -> Event:
        """Emit one event in *stream* (its descriptor is made from the first event)."""
        if stream not in self._descriptors:
            keys = {
                k: array_key(v, self.stage.stage_name)
                if isinstance(v, np.ndarray)
                else scalar_key(v, self.stage.stage_name)
                for k, v in data.items()
            }
            bundle = self._bundle.compose_descriptor(name=stream, data_keys=keys)
            self._descriptors[stream] = bundle
            self.stage.publish("descriptor", bundle.descriptor_doc)
            validate = True  # the first event of a stream is checked against the schema
        else:
            # the next ones are built alike: checking their keys suffices (the schema's
            # check cost 0.26 ms an event, as much as reading a raw frame)
            validate = False
            keys = self._descriptors[stream].descriptor_doc["data_keys"]
            if data.keys() != keys.keys():
                raise ValueError(
                    f"stage {self.stage.stage_name!r}: an event of stream {stream!r} has keys "
                    f"{sorted(data)}, its descriptor {sorted(keys)}"
                )
        now = time.time()
        ev = self._descriptors[stream].compose_event(
            data=data, timestamps={k: now for k in data}, validate=validate
        )
        self.stage.frames_out += 1
        self.stage.publish("event", ev)
        return ev

    def stop(self, exit_status: ExitStatus = "success", reason: str = "") -> None:
        """Emit the stop document (once)."""
        if self.stopped:
            return
        self.stopped = True
        self.stage.publish(
            "stop", self._bundle.compose_stop(exit_status=exit_status, reason=reason)
        )
