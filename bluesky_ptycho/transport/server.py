"""The back-end: ``bluesky-ptycho serve --pipeline FILE``.

A :class:`Server` takes documents from its PULL socket (one per message,
decoded strictly by :mod:`bluesky_ptycho.io.codec`), drops duplicates, and
feeds them to a :class:`~bluesky_ptycho.pipeline.runner.Pipeline`; it
answers commands on its ROUTER socket (:mod:`.control`). The derived runs go
to its catalog; the raw runs are stored by the RunEngine's side (the profile
subscribes its catalog writer), in the same catalog, so a back-end restarted
mid-scan picks a run up from the documents already stored: the first
document of a run it has no start for makes it look the run up in the
catalog, and the run's stop makes it fill any gap (documents in flight while
it was down) from the catalog again.

**No message stops it, and none makes it wait.** Every receive and reply is
guarded; a message that cannot be decoded, a request that is not one, a
pipeline error: each is counted by kind (``bluesky-ptycho status`` shows the
counts) and the loop goes on. Catalog look-ups run on a thread of their own,
at most ``max_lookups`` at a time, with negative answers remembered for
``unknown_ttl`` seconds; documents of a run being looked up wait in a
bounded buffer. At most ``max_open_runs`` runs are open at once (a start
beyond is refused and counted); a run that receives nothing for
``run_idle_timeout`` seconds is closed — its stages stopped with
``exit_status: "fail"``, their threads, memory and log file released.

Back-pressure: while the stages that take raw frames hold ``max_backlog``
documents and frames, the server stops reading; ZeroMQ then holds messages,
and past its high-water mark the publisher's queue holds documents (never
the RunEngine: see :class:`~bluesky_ptycho.transport.publisher.Publisher`).

Security: the sockets bind to localhost unless keys are given
(:mod:`.security`); frames are read only from files under the configured
data roots (:func:`bluesky_ptycho.io.frames.confine_reads`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import zmq

from bluesky_ptycho.io import frames
from bluesky_ptycho.io.codec import (
    MAX_MESSAGE_BYTES,
    BadMessage,
    decode,
    pack,
    unpack_value,
)
from bluesky_ptycho.storage.logs import SUMMARY
from bluesky_ptycho.threads import Worker
from bluesky_ptycho.transport import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_DATA_PORT,
    DEFAULT_HOST,
    address,
)
from bluesky_ptycho.transport.security import ServerKeys, is_local
from bluesky_ptycho.transport.snapshots import DEFAULT_SNAPSHOT_PORT, SnapshotPublisher

log = logging.getLogger(__name__)
#: how long a look-up waits for a run the catalog does not hold yet (the RunEngine's side may
#: still be writing it)
RESUME_WAIT_S = 10.0
#: documents of one run held while its look-up runs; beyond, they are dropped and counted
MAX_WAITING = 10_000
#: counters `bluesky-ptycho status` shows, in this order (others follow)
COUNTERS = (
    "received", "duplicates", "malformed", "oversized", "control_requests", "control_malformed",
    "control_refused", "pipeline_errors", "errors", "orphan_documents", "orphan_runs",
    "resumed_runs", "refilled", "refused_runs", "idle_closed_runs", "lookups_refused",
    "waiting_dropped",
)  # fmt: skip


class Server:
    """Serve a pipeline to remote RunEngines (see the module docstring).

    Parameters
    ----------
    pipeline : Pipeline
    host : str
        Interface to bind; ``127.0.0.1`` by default. Any other needs *keys*.
    port, control_port : int
        Documents in (PULL) and commands (ROUTER, for REQ clients).
    keys : path-like, optional
        Folder made by ``bluesky-ptycho keys``: CURVE encryption, and only
        clients with an authorized key are admitted.
    catalog : Catalog, optional
        Where the derived runs are stored, and where the raw runs are read
        back from after a restart.
    max_backlog : int
        Documents and frames the raw-frame stages may hold before reading pauses.
    max_message_bytes : int
        Larger messages are rejected (counted as ``oversized``).
    snapshot_port : int or None
        What the stages emit goes out here (PUB) for viewers; None: not published.
    max_open_runs : int
        Runs open at once; a start beyond is refused.
    run_idle_timeout : float
        Seconds without a document after which an open run is closed.
    max_lookups : int
        Catalog look-ups pending at once; documents of further unknown runs are dropped.
    unknown_ttl : float
        Seconds a run the catalog did not hold is remembered as unknown.
    """

    def __init__(
        self,
        pipeline: Any,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_DATA_PORT,
        control_port: int = DEFAULT_CONTROL_PORT,
        keys: str | Path | None = None,
        catalog: Any = None,
        max_backlog: int = 64,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        snapshot_port: int | None = DEFAULT_SNAPSHOT_PORT,
        max_open_runs: int = 4,
        run_idle_timeout: float = 3600.0,
        max_lookups: int = 4,
        unknown_ttl: float = 60.0,
    ) -> None:
        if not is_local(host) and keys is None:
            raise ValueError(
                f"serve --host {host}: listening beyond this machine needs CURVE keys; make them "
                "with `bluesky-ptycho keys DIR` and give --keys DIR (clients need DIR/client.* "
                "and DIR/server.key)"
            )
        for name, value, lo, hi in (
            ("--max-backlog", max_backlog, 1, 1_000_000),
            ("--max-open-runs", max_open_runs, 1, 1000),
            ("--max-lookups", max_lookups, 1, 1000),
            ("--run-idle-timeout", run_idle_timeout, 1, 7 * 86400),
            ("--max-message-mb", max_message_bytes / 2**20, 0.001, 4096),
        ):
            if not lo <= value <= hi:  # (NaN fails too)
                raise ValueError(f"{name} {value}: give a value in [{lo}, {hi}]")
        self.pipeline = pipeline
        self.catalog = catalog
        self.max_backlog = max_backlog
        self.max_message_bytes = int(max_message_bytes)
        self.max_open_runs = max_open_runs
        self.run_idle_timeout = float(run_idle_timeout)
        self.max_lookups = max_lookups
        self.unknown_ttl = float(unknown_ttl)
        self.counters: Counter[str] = Counter()
        self.started = time.time()
        self._stop = threading.Event()
        self._seen: dict[str, set[Any]] = {}  # open run → identities of its documents
        self._last: dict[str, float] = {}  # open run → when its last document came
        self._resumed: set[str] = set()
        self._stopped: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._refused: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._unknown: dict[str, float] = {}  # run → until when it counts as unknown
        self._waiting: dict[str, list[tuple[str, dict]]] = {}  # run being looked up → its docs
        self._answers: collections.deque = collections.deque()  # (run, stored docs) from look-ups
        self._lookups = Worker("catalog-lookup", self._lookup, log=log)
        self._context = zmq.Context()
        self._auth = None
        server_keys = ServerKeys(Path(keys)) if keys is not None else None
        if server_keys is not None:
            self._auth = server_keys.authenticator(self._context)
        self.data = self._context.socket(zmq.PULL)
        self.control = self._context.socket(zmq.ROUTER)
        for sock in (self.data, self.control):
            if server_keys is not None:
                server_keys.apply(sock)
            sock.linger = 0
        # ZeroMQ's own guard: a frame far over the limit closes that connection
        self.data.maxmsgsize = 4 * self.max_message_bytes
        self.data.rcvhwm = 16
        self.control.maxmsgsize = 2**20
        self.control.router_mandatory = False  # a reply to a peer gone away is dropped, quietly
        self.data.bind(address(host, port))
        self.control.bind(address(host, control_port))
        self.address = address(host, port)
        self.control_address = address(host, control_port)
        if catalog is not None:
            pipeline.subscribe(catalog.writer)
        self.snapshots = None
        if snapshot_port is not None:
            self.snapshots = SnapshotPublisher(
                self._context, address(host, snapshot_port), server_keys
            )
            pipeline.subscribe(self.snapshots)

    # -- running -------------------------------------------------------------------------
    def serve(self) -> None:
        """Receive and answer until :meth:`stop` is called (from another thread or a signal)."""
        both, control_only = zmq.Poller(), zmq.Poller()
        for poller in (both, control_only):
            poller.register(self.control, zmq.POLLIN)
        both.register(self.data, zmq.POLLIN)
        log.info("serving %s (documents) and %s (control)", self.address, self.control_address)
        while not self._stop.is_set():
            try:
                self._turn(both, control_only)
            except Exception:  # the loop itself must not die: count, log, go on
                self.counters["errors"] += 1
                log.exception("the back-end's loop met an error; it goes on")
                time.sleep(0.01)
        log.info("stopped serving", extra=SUMMARY)

    def _turn(self, both: zmq.Poller, control_only: zmq.Poller) -> None:
        self._take_answers()
        self._close_idle_runs()
        full = self.pipeline.backlog() >= self.max_backlog
        if full:
            self.counters["paused_polls"] += 1
        # while full, leave the data socket alone (ZeroMQ holds the messages); look again soon
        ready = dict(control_only.poll(5) if full else both.poll(100))
        if self.control in ready:
            for _ in range(16):  # a few requests per turn
                if not self._answer():
                    break
        if self.data in ready and not full:
            for _ in range(8):  # a few messages per turn, then look at control again
                try:
                    parts = self.data.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                try:
                    self._take(parts)
                except Exception:  # nothing a peer sends may stop the back-end
                    self.counters["errors"] += 1
                    log.exception("a received document could not be handled")
                if self.pipeline.backlog() >= self.max_backlog:
                    break

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Close the sockets (call after :meth:`serve` has returned)."""
        self._lookups.close()
        if self.snapshots is not None:
            self.snapshots.close()
        self.data.close(0)
        self.control.close(0)
        if self._auth is not None:
            self._auth.stop()
        self._context.term()

    # -- documents in ----------------------------------------------------------------------
    def _take(self, parts: list) -> None:
        try:
            name, doc, run = decode(parts, self.max_message_bytes)
        except BadMessage as err:
            self._count_bad(err.reason, str(err))
            return
        self.counters["received"] += 1
        if name == "start":
            run = doc.get("uid")
        if not isinstance(run, str) or not run or not isinstance(doc.get("uid", ""), str):
            self._count_bad("malformed", f"a {name} document without its run's uid")
            return
        if run in self._stopped:  # a late copy: the run is over (and its seen set freed)
            self.counters["duplicates"] += 1
            return
        if run in self._refused:
            self.counters["orphan_documents"] += 1
            return
        if run in self._seen:
            self._last[run] = time.monotonic()
            if name == "stop" and run in self._resumed:
                self._refill(run)
            self._feed(run, name, doc)
            if name == "stop":
                self._forget(run, stopped=True)
            return
        if name == "start":
            if len(self._seen) >= self.max_open_runs:
                self._refuse(run, "start")
                return
            self._open(run)
            self._feed(run, name, doc)
            return
        self._unknown_run(run, name, doc)

    def _count_bad(self, kind: str, what: str) -> None:
        self.counters[kind] += 1
        n = self.counters[kind]
        if n <= 10 or n % 1000 == 0:
            log.warning("%s (%d so far)", what, n)

    def _open(self, run: str) -> None:
        self._seen[run] = set()
        self._last[run] = time.monotonic()

    def _refuse(self, run: str, why: str) -> None:
        self.counters["refused_runs"] += 1
        _remember(self._refused, run)
        n = self.counters["refused_runs"]
        if n > 10 and n % 1000:
            return
        log.error(
            "run %s refused: %d runs are open already (serve --max-open-runs %d); its documents "
            "are dropped. Runs open: %s",
            run, len(self._seen), self.max_open_runs, sorted(self._seen),
        )  # fmt: skip

    def _forget(self, run: str, stopped: bool) -> None:
        self._seen.pop(run, None)
        self._last.pop(run, None)
        self._resumed.discard(run)
        if stopped:
            _remember(self._stopped, run)

    def _feed(self, run: str, name: str, doc: dict) -> None:
        try:
            key = _identity(name, doc)
        except (KeyError, TypeError) as err:
            self._count_bad("malformed", f"a {name} document lacks {err}")
            return
        seen = self._seen[run]
        if key in seen:
            self.counters["duplicates"] += 1
            return
        seen.add(key)
        try:
            self.pipeline(name, doc)
        except Exception:  # one bad document must not stop the back-end
            self.counters["pipeline_errors"] += 1
            log.exception("the pipeline failed on a %s document of run %s", name, run)

    # -- runs we have no start for: look them up in the catalog, off the loop -----------------
    def _unknown_run(self, run: str, name: str, doc: dict) -> None:
        now = time.monotonic()
        if self._unknown.get(run, 0) > now or self.catalog is None:
            self.counters["orphan_documents"] += 1
            if self.catalog is None and run not in self._unknown:
                self.counters["orphan_runs"] += 1
                self._unknown[run] = now + self.unknown_ttl
                log.error(
                    "documents of run %s arrive without its start document and there is no "
                    "catalog to read it from (serve --catalog); they are dropped", run
                )  # fmt: skip
            return
        waiting = self._waiting.get(run)
        if waiting is None:
            if len(self._waiting) >= self.max_lookups:
                self.counters["lookups_refused"] += 1
                self.counters["orphan_documents"] += 1
                return
            if len(self._seen) >= self.max_open_runs:
                self._refuse(run, name)
                return
            waiting = self._waiting[run] = []
            self._lookups.put(run)
        if len(waiting) >= MAX_WAITING:
            self.counters["waiting_dropped"] += 1
            return
        waiting.append((name, doc))

    def _lookup(self, run: str) -> None:
        """On the look-up thread: the run's stored documents (empty when it is not there)."""
        docs: list[tuple[str, dict]] = []
        end = time.monotonic() + RESUME_WAIT_S
        while not self._stop.is_set():
            try:
                docs = self.catalog.documents(run)
                break
            except KeyError:
                if time.monotonic() > end:
                    break
                time.sleep(0.5)
            except Exception as err:  # the catalog cannot export documents
                log.error(
                    "cannot read run %s back from the catalog at %s: %s (a Tiled server needs "
                    "the BlueskyRun json-seq exporter in its media_types, see the README)",
                    run, self.catalog.location, err,
                )  # fmt: skip
                break
        self._answers.append((run, docs))

    def _take_answers(self) -> None:
        while self._answers:
            run, docs = self._answers.popleft()
            waiting = self._waiting.pop(run, [])
            if not docs or docs[0][0] != "start":
                self.counters["orphan_runs"] += 1
                self.counters["orphan_documents"] += len(waiting)
                self._unknown[run] = time.monotonic() + self.unknown_ttl
                log.error(
                    "documents of run %s arrive without its start document, and the catalog "
                    "does not hold it; %d are dropped (a back-end restarted mid-run without a "
                    "catalog, or a stray sender)", run, len(waiting),
                )  # fmt: skip
                continue
            if len(self._seen) >= self.max_open_runs:
                self._refuse(run, "resume")
                continue
            self._open(run)
            self._resumed.add(run)
            self.counters["resumed_runs"] += 1
            log.warning("run %s picked up mid-scan from %d stored documents", run, len(docs))
            for name, doc in docs:
                if name != "stop":
                    self._feed(run, name, doc)
            for name, doc in waiting:
                self._feed_open(run, name, doc)
        now = time.monotonic()
        for run in [r for r, until in self._unknown.items() if until < now]:
            del self._unknown[run]

    def _feed_open(self, run: str, name: str, doc: dict) -> None:
        if run not in self._seen:
            self.counters["duplicates"] += 1
            return
        if name == "stop":
            self._refill(run)
        self._feed(run, name, doc)
        if name == "stop":
            self._forget(run, stopped=True)

    def _refill(self, run: str) -> None:
        """Before a resumed run's stop: the documents that were in flight while we were down.
        (Read on this thread: a run's stop is rare, and the catalog has the run.)"""
        try:
            stored = self.catalog.documents(run)
        except Exception as err:
            log.error("run %s: could not refill from the catalog: %s", run, err)
            return
        n = 0
        for name, doc in stored:
            if name != "stop" and _identity(name, doc) not in self._seen[run]:
                n += 1
                self._feed(run, name, doc)
        self.counters["refilled"] += n
        log.info("run %s: %d documents refilled from the catalog", run, n)

    def _close_idle_runs(self) -> None:
        now = time.monotonic()
        for run in [r for r, t in self._last.items() if now - t > self.run_idle_timeout]:
            self.counters["idle_closed_runs"] += 1
            log.error(
                "run %s received no document for %.0f s (serve --run-idle-timeout): closed, its "
                "stages stopped with exit_status 'fail'", run, now - self._last[run],
            )  # fmt: skip
            self._forget(run, stopped=True)
            try:
                self.pipeline.close_run(
                    run, f"no document for {self.run_idle_timeout:.0f} s: closed by the back-end"
                )
            except Exception:
                self.counters["pipeline_errors"] += 1
                log.exception("closing idle run %s failed", run)

    # -- control ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The pipeline's status, with the server's counters and backlog."""
        out = self.pipeline.status()
        counters = {k: self.counters.get(k, 0) for k in COUNTERS}
        counters.update({k: v for k, v in self.counters.items() if k not in counters})
        out["server"] = {
            "address": self.address,
            "uptime": round(time.time() - self.started, 1),
            "backlog": self.pipeline.backlog(),
            "max_backlog": self.max_backlog,
            "open_runs": len(self._seen),
            "max_open_runs": self.max_open_runs,
            "lookups_pending": len(self._waiting),
            "frame_reads_refused": frames.refused_reads(),
            "counters": counters,
        }
        return out

    def _answer(self) -> bool:
        """Answer one request on the control socket; False when none was waiting."""
        try:
            parts = self.control.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return False
        self.counters["control_requests"] += 1
        # a REQ client's request comes as [identity, b"", request]
        if len(parts) != 3 or parts[1] != b"":
            self._count_bad("control_malformed", f"a control message of {len(parts)} frames")
            if len(parts) >= 2:  # answer what can be answered: the peer may be waiting
                self._reply(parts[0], {"ok": False, "error": "a request is one msgpack frame"})
            return True
        identity, _, body = parts
        try:
            request = unpack_value(body)
            reply = self.command(request)
        except BadMessage as err:
            self._count_bad("control_malformed", str(err))
            reply = {"ok": False, "error": str(err)}
        except Exception as err:  # a bad request gets an answer, never a dead server
            self.counters["control_refused"] += 1
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        self._reply(identity, reply)
        return True

    def _reply(self, identity: bytes, reply: dict) -> None:
        try:
            body = pack(reply)
        except Exception as err:
            body = pack({"ok": False, "error": f"the reply could not be encoded: {err}"})
        try:
            self.control.send_multipart([identity, b"", body], zmq.NOBLOCK)
        except zmq.ZMQError as err:  # the peer went away, or its queue is full
            self.counters["control_reply_failed"] += 1
            log.warning("a control reply could not be sent: %s", err)

    def command(self, request: Any) -> dict:
        """Carry out one control request (see :mod:`.control`); the reply to send back."""
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            raise ValueError("a request is a map with a 'command'")
        cmd = request["command"]
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "set":
            stage, params = request.get("stage"), request.get("params")
            if not isinstance(stage, str) or not isinstance(params, dict):
                raise ValueError("set needs 'stage' (a stage key) and 'params' (a map)")
            applied = self.pipeline.set(stage, dict(params))
            return {"ok": True, "applied": applied}
        if cmd == "abort":
            reason = request.get("reason", "aborted")
            return {"ok": True, "aborted": self.pipeline.abort(str(reason)[:500])}
        if cmd == "clear":
            cleared = self.pipeline.clear()
            for uid in cleared:
                self._forget(uid, stopped=False)
                self._stopped.pop(uid, None)
            return {"ok": True, "cleared": cleared}
        if cmd == "reset":
            self.pipeline.reset()
            self._seen.clear()
            self._last.clear()
            self._resumed.clear()
            self._stopped.clear()
            self._refused.clear()
            self._unknown.clear()
            self.counters.clear()
            return {"ok": True}
        if cmd == "ping":
            return {"ok": True, "time": time.time()}
        raise ValueError(f"unknown command {cmd[:40]!r}: status, set, abort, clear, reset or ping")


def _remember(seen: collections.OrderedDict, key: str, most: int = 10_000) -> None:
    """Add *key* to a bounded memory of runs (the oldest forgotten first)."""
    seen[key] = None
    seen.move_to_end(key)
    while len(seen) > most:
        seen.popitem(last=False)


def _identity(name: str, doc: dict) -> Any:
    """What makes a document the same one, live or read back from the catalog (which
    gives events and frame references new uids, and one reference per event)."""
    if name == "event":
        return ("event", doc["descriptor"], doc["seq_num"])
    if name == "event_page":
        return ("event", doc["descriptor"], tuple(doc["seq_num"]))
    if name == "stream_datum":
        s = doc["seq_nums"]
        return ("stream_datum", doc["stream_resource"], s["start"], s["stop"])
    return (name, doc.get("uid"))
