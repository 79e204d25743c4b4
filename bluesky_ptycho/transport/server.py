"""The back-end: ``bluesky-ptycho serve PIPELINE.toml``.

A :class:`Server` takes documents from its PULL socket (one per message,
:mod:`.wire`), drops duplicates (by document uid), and feeds them to a
:class:`~bluesky_ptycho.pipeline.runner.Pipeline`; it answers commands on
its REP socket (:mod:`.control`). The derived runs go to its catalog; the raw
runs are stored by the RunEngine's side (the profile subscribes its catalog
writer), in the same catalog, so a back-end restarted mid-scan picks the
run up from the documents already stored: the first document of a run it
has no start for makes it read that run from the catalog first (the frames
from the detector files: shared storage), and the run's stop makes it fill
any gap (documents in flight while it was down) from the catalog again.

Back-pressure: while the stages that take raw frames hold ``max_backlog``
documents and frames, the server stops reading; ZeroMQ then holds messages,
and past its high-water mark the publisher's queue holds documents (never
the RunEngine: see :class:`~bluesky_ptycho.transport.publisher.Publisher`).
A slow stage further down grows only its own queue.

Security: the sockets bind to localhost unless keys are given
(:mod:`.security`); a message that cannot be decoded or is too large is
counted and dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import zmq

from bluesky_ptycho.transport import DEFAULT_CONTROL_PORT, DEFAULT_DATA_PORT, DEFAULT_HOST, address
from bluesky_ptycho.transport.security import ServerKeys, is_local
from bluesky_ptycho.transport.snapshots import DEFAULT_SNAPSHOT_PORT, SnapshotPublisher
from bluesky_ptycho.transport.wire import MAX_MESSAGE_BYTES, BadMessage, decode

log = logging.getLogger(__name__)
_RESUME_WAIT_S = 10.0


class Server:
    """Serve a pipeline to remote RunEngines (see the module docstring).

    Parameters
    ----------
    pipeline : Pipeline
    host : str
        Interface to bind; ``127.0.0.1`` by default. Any other needs *keys*.
    port, control_port : int
        Documents in (PULL) and commands (REP).
    snapshot_port : int or None
        What the stages emit goes out here (PUB) for viewers
        (:mod:`.snapshots`); None: not published.
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
    ) -> None:
        if not is_local(host) and keys is None:
            raise ValueError(
                f"serve --host {host}: listening beyond this machine needs CURVE keys; make them "
                "with `bluesky-ptycho keys DIR` and give --keys DIR (clients need DIR/client.* "
                "and DIR/server.key)"
            )
        if max_backlog < 1:
            raise ValueError(f"--max-backlog {max_backlog}: give at least 1")
        self.pipeline = pipeline
        self.catalog = catalog
        self.max_backlog = max_backlog
        self.max_message_bytes = max_message_bytes
        self.counters: Counter[str] = Counter()
        self.started = time.time()
        self._stop = threading.Event()
        self._seen: dict[str, set[str]] = {}
        self._resumed: set[str] = set()
        self._orphans: set[str] = set()
        self._stopped: set[str] = set()
        self._context = zmq.Context()
        self._auth = None
        server_keys = ServerKeys(Path(keys)) if keys is not None else None
        if server_keys is not None:
            self._auth = server_keys.authenticator(self._context)
        self.data = self._context.socket(zmq.PULL)
        self.control = self._context.socket(zmq.REP)
        for sock in (self.data, self.control):
            if server_keys is not None:
                server_keys.apply(sock)
            sock.linger = 0
        # ZeroMQ's own guard: a frame far over the limit closes that connection
        self.data.maxmsgsize = 4 * max_message_bytes
        self.data.rcvhwm = 16
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
            full = self.pipeline.backlog() >= self.max_backlog
            if full:
                self.counters["paused_polls"] += 1
            # while full, leave the data socket alone (ZeroMQ holds the messages) and
            # look again after 5 ms
            ready = dict(control_only.poll(5) if full else both.poll(200))
            if self.control in ready:
                self._answer()
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
        log.info("stopped serving")

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Close the sockets (call after :meth:`serve` has returned)."""
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
            self.counters[err.reason] += 1
            if self.counters[err.reason] <= 10 or self.counters[err.reason] % 1000 == 0:
                log.warning("%s (%d so far)", err, self.counters[err.reason])
            return
        self.counters["received"] += 1
        if name == "start":
            run = doc.get("uid")
        if not isinstance(run, str) or not isinstance(doc.get("uid", ""), str):
            self.counters["malformed"] += 1
            log.warning("a %s document without its run's uid: dropped", name)
            return
        if run in self._orphans:
            self.counters["orphan_documents"] += 1
            return
        if run in self._stopped:  # a late copy: the run is over (and its seen set freed)
            self.counters["duplicates"] += 1
            return
        if run not in self._seen:
            self._seen[run] = set()
            if name != "start" and not self._resume(run):
                self._orphans.add(run)
                self.counters["orphan_documents"] += 1
                return
        if name == "stop" and run in self._resumed:
            self._refill(run)
        self._feed(run, name, doc)
        if name == "stop":
            del self._seen[run]
            self._stopped.add(run)

    def _feed(self, run: str, name: str, doc: dict) -> None:
        key = _identity(name, doc)
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

    # -- restart: pick a run up from the catalog -----------------------------------------------
    def _stored(self, run: str) -> list[tuple[str, dict]]:
        if self.catalog is None:
            return []
        end = time.monotonic() + _RESUME_WAIT_S
        while True:
            try:
                return self.catalog.documents(run)
            except KeyError:
                if time.monotonic() > end:
                    return []
                time.sleep(0.5)
            except Exception as err:  # the catalog cannot export documents
                log.error(
                    "cannot read run %s back from the catalog at %s: %s (a Tiled server "
                    "needs the BlueskyRun json-seq exporter in its media_types, see the "
                    "README)",
                    run,
                    self.catalog.location,
                    err,
                )
                return []

    def _resume(self, run: str) -> bool:
        """Feed run *run* from the catalog; False when it cannot be found there."""
        docs = self._stored(run)
        if not docs:
            self.counters["orphan_runs"] += 1
            log.error(
                "documents of run %s arrive without its start document, and the catalog "
                "does not hold it: this back-end restarted mid-run without a catalog "
                "(give --catalog); the run's documents are ignored",
                run,
            )
            return False
        self._resumed.add(run)
        self.counters["resumed_runs"] += 1
        log.warning("run %s picked up mid-scan from %d stored documents", run, len(docs))
        for name, doc in docs:
            if name != "stop":
                self._feed(run, name, doc)
        return True

    def _refill(self, run: str) -> None:
        """Before a resumed run's stop: the documents that were in flight while we were down."""
        before = self.counters["received"]
        for name, doc in self._stored(run):
            if name != "stop" and _identity(name, doc) not in self._seen[run]:
                self.counters["refilled"] += 1
                self._feed(run, name, doc)
        log.info(
            "run %s: %d documents refilled from the catalog",
            run,
            self.counters["received"] - before,
        )

    # -- control ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The pipeline's status, with the server's counters and backlog."""
        out = self.pipeline.status()
        out["server"] = {
            "address": self.address,
            "uptime": round(time.time() - self.started, 1),
            "backlog": self.pipeline.backlog(),
            "max_backlog": self.max_backlog,
            **dict(self.counters),
        }
        return out

    def _answer(self) -> None:
        try:
            request = msgpack.unpackb(self.control.recv(), raw=False)
            reply = self.command(request)
        except Exception as err:  # a bad request gets an answer, never a dead server
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        self.control.send(msgpack.packb(reply, default=_plain))

    def command(self, request: dict) -> dict:
        """Carry out one control request (see :mod:`.control`); the reply to send back."""
        if not isinstance(request, dict) or "command" not in request:
            raise ValueError("a request is a map with a 'command'")
        cmd = request["command"]
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd == "set":
            applied = self.pipeline.set(request["stage"], dict(request["params"]))
            return {"ok": True, "applied": applied}
        if cmd == "abort":
            return {"ok": True, "aborted": self.pipeline.abort(request.get("reason", "aborted"))}
        if cmd == "clear":
            cleared = self.pipeline.clear()
            for uid in cleared:
                self._seen.pop(uid, None)
                self._stopped.discard(uid)
            return {"ok": True, "cleared": cleared}
        if cmd == "reset":
            self.pipeline.reset()
            self._seen.clear()
            self._resumed.clear()
            self._orphans.clear()
            self._stopped.clear()
            self.counters.clear()
            return {"ok": True}
        if cmd == "ping":
            return {"ok": True, "time": time.time()}
        raise ValueError(f"unknown command {cmd!r}: status, set, abort, clear, reset or ping")


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


def _plain(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple | set):
        return list(obj)
    return str(obj)
