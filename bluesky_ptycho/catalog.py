"""Where runs are stored: a Tiled catalog, on disk by default, or a Tiled server.

:class:`Catalog` opens one. With no URI it starts an embedded Tiled server
(``tiled.server.SimpleTiledServer``: SQLite catalog, DuckDB tables, zarr
arrays) in ``<data dir>/catalog``, which outlives the process; with a URI and
an API key it talks to a Tiled server (``tiled serve``, PostgreSQL-backed at a
facility). Either way the runs live in the container ``runs`` (spec
``CatalogOfBlueskyRuns``), so Tiled's client and databroker's read them alike::

    cat = Catalog()                      # or Catalog("http://host:8000", api_key=...)
    RE.subscribe(cat.writer)             # raw runs
    pipeline.subscribe(cat.writer)       # the runs the stages derive
    cat[uid]["primary"]["fccd_image"].read()
    cat.databroker[uid]                  # databroker's v1 API over the same runs

:class:`CatalogWriter` never blocks the caller and never loses a document:
each document goes to a spool file on local disk first, then to Tiled
through ``bluesky_tiled_plugins.TiledWriter`` on the writer's own thread. If
Tiled cannot be reached, the writer says so in the log, keeps spooling, and
retries; when Tiled answers again each run that missed documents is written
anew from its spool (its partial copy is removed first). A spool file is
deleted once its run's stop document is in the catalog; files left by a
process that died are written by the next :class:`Catalog` opened on the
same data directory.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import msgpack_numpy

log = logging.getLogger("bluesky_ptycho.catalog")

ENV_DATA = "BLUESKY_PTYCHO_DATA"
ENV_LOGS = "BLUESKY_PTYCHO_LOGS"
RUNS = "runs"


def data_dir() -> Path:
    """The user's data directory (``$BLUESKY_PTYCHO_DATA``, else the platform's)."""
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser()
    import platformdirs

    return platformdirs.user_data_path("bluesky_ptycho")


def log_dir() -> Path:
    """Where per-run log files go (``$BLUESKY_PTYCHO_LOGS``, else the platform's log dir)."""
    if os.environ.get(ENV_LOGS):
        return Path(os.environ[ENV_LOGS]).expanduser()
    import platformdirs

    return platformdirs.user_log_path("bluesky_ptycho")


class Catalog:
    """A catalog of runs (see the module docstring).

    Parameters
    ----------
    uri : str, optional
        A Tiled server, e.g. ``http://127.0.0.1:8000``. None starts the
        embedded on-disk catalog under *directory*.
    api_key : str, optional
        The server's API key (``tiled serve ... --api-key``).
    directory : path-like, optional
        Data directory: the embedded catalog (``catalog/``), the spool
        (``spool/``) and the raw frames (``raw/``, readable by the catalog).
        Default :func:`data_dir`.
    readable_storage : list of path-like
        More folders whose files the embedded catalog may read (detector
        files written elsewhere).
    retry_interval : float
        Seconds between attempts to reach an unreachable catalog.
    """

    def __init__(
        self,
        uri: str | None = None,
        api_key: str | None = None,
        directory: str | Path | None = None,
        readable_storage: list[str | Path] | tuple = (),
        retry_interval: float = 2.0,
    ) -> None:
        self.directory = Path(directory) if directory is not None else data_dir()
        self.raw_dir = self.directory / "raw"
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        self.server = None
        if uri is None:
            from tiled.server import SimpleTiledServer

            _serve_documents()
            self.server = SimpleTiledServer(
                self.directory / "catalog",
                readable_storage=[self.raw_dir, *map(Path, readable_storage)],
            )
            uri = self.server.uri
            # the server's thread is not a daemon: close it before Python waits for such threads
            # (an interactive session that ends without close() would hang otherwise)
            threading._register_atexit(lambda: self.close(timeout=30))  # type: ignore[attr-defined]
        self.uri = uri
        self.api_key = api_key
        self.location = str(self.directory / "catalog") if self.server else _safe(uri)
        self.runs = self._connect().v3  # Tiled's (v3) client of bluesky runs
        self.writer = CatalogWriter(
            self._connect, self.directory / "spool", retry_interval=retry_interval
        )

    def _connect(self) -> Any:
        """The ``runs`` container (made on first use); raises ConnectionError when unreachable."""
        import httpx
        from tiled.client import from_uri
        from tiled.structures.core import Spec

        try:
            client = from_uri(self.uri, api_key=self.api_key)
            if RUNS not in client:
                client.create_container(RUNS, specs=[Spec("CatalogOfBlueskyRuns", version="3.0")])
            return client[RUNS]
        except (httpx.TransportError, httpx.HTTPStatusError, RuntimeError) as err:
            # (tiled raises RuntimeError for a missing or wrong API key)
            raise ConnectionError(
                f"the Tiled catalog at {_safe(self.uri)} cannot be reached or refused the API key "
                f"({err}); start it "
                "(`tiled serve catalog ...`), check the URI and API key, or open the embedded "
                "catalog with Catalog() and no URI"
            ) from err

    def __getitem__(self, key: str | int) -> Any:
        """A stored run by uid or partial uid; by scan id (an int, or a string of digits) or -1
        (the latest), the raw run, not one a stage derived from it."""
        if isinstance(key, str) and not key.isdigit():
            return self.runs[key].v3  # (v3 even after databroker's v2 view has been made)
        from tiled.queries import Key

        n = int(key)
        raw = self.raw_runs(Key("scan_id") == n if n > 0 else None)
        if not raw:
            raise KeyError(f"no raw run with scan id {n} in the catalog at {self.location}")
        return raw[-1].v3

    def raw_runs(self, query: Any = None) -> list[Any]:
        """The runs the RunEngine made (not the stages), oldest first, matching a Tiled *query*."""
        found = self.runs.search(query) if query is not None else self.runs
        return [r for r in found.values() if "stage" not in r.metadata["start"]]

    def derived(self, uid: str) -> dict[str, Any]:
        """The runs the stages derived from run *uid*, directly or through other stages' runs,
        by stage name (the latest of each)."""
        from tiled.queries import Eq

        out: dict[str, Any] = {}
        sources = [uid]
        while sources:
            found = self.runs.search(Eq("start.source_run", sources.pop())).values()
            for run in found:
                out[run.metadata["start"]["stage"]] = run.v3
                sources.append(run.metadata["start"]["uid"])
        return out

    def documents(self, uid: str) -> list[tuple[str, dict]]:
        """The stored documents of run *uid*, in the order a RunEngine emits them live.

        Tiled returns each stream's events first and its frames' references
        after them, as one StreamDatum for the whole stream; this puts each
        StreamResource after its stream's descriptor and splits the
        StreamDatum into one per event, just before the event — what the
        detector emitted during the scan, so stages see a replay as they saw
        the scan.
        """
        return live_order([(name, doc) for name, doc in self.runs[uid].documents()])

    @property
    def databroker(self) -> Any:
        """The same runs through databroker's v1 API (``db[uid]``, ``db[-1].table()``)."""
        from databroker.v1 import Broker

        return Broker(self._connect().v2)  # its own client: v2 run clients, ours stay v3

    def close(self, timeout: float | None = 60) -> None:
        """Write what is queued (within *timeout* s), then stop the writer and the embedded server."""
        self.writer.close(timeout)
        if self.server is not None:
            self.server.close()
            self.server = None


def live_order(docs: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """*docs* of one run with resources after their descriptors and one datum per event."""
    resources: dict[str, dict] = {}
    by_descriptor: dict[str, list[dict]] = {}
    for name, doc in docs:
        if name == "stream_resource":
            resources[doc["uid"]] = doc
        elif name == "stream_datum":
            by_descriptor.setdefault(doc["descriptor"], []).append(doc)
    out: list[tuple[str, dict]] = []
    sent: set[str] = set()
    for name, doc in docs:
        if name in ("stream_resource", "stream_datum"):
            continue
        out.append((name, doc))
        if name == "descriptor":
            for d in by_descriptor.get(doc["uid"], []):
                if d["stream_resource"] not in sent:
                    sent.add(d["stream_resource"])
                    out.append(("stream_resource", resources[d["stream_resource"]]))
        elif name in ("event", "event_page"):
            seqs = doc["seq_num"] if name == "event_page" else [doc["seq_num"]]
            datums = [_datum_for(d, s) for s in seqs for d in by_descriptor.get(doc["descriptor"], [])]
            out[-1:-1] = [("stream_datum", d) for d in datums if d is not None]
    return out


def _datum_for(datum: dict, seq: int) -> dict | None:
    """The part of a StreamDatum that covers event *seq*, or None."""
    s0, s1 = datum["seq_nums"]["start"], datum["seq_nums"]["stop"]
    if not s0 <= seq < s1:
        return None
    i = datum["indices"]["start"] + seq - s0
    return {**datum, "uid": f"{datum['uid']}/{seq}", "seq_nums": {"start": seq, "stop": seq + 1},
            "indices": {"start": i, "stop": i + 1}}


def _serve_documents() -> None:
    """Let the embedded server export a run's documents (``BlueskyRun.documents()``).

    A ``tiled serve config`` server gets the same from its configuration
    (``media_types: BlueskyRun: application/json-seq: ...``; see the README).
    """
    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from tiled.media_type_registration import default_serialization_registry as registry

    registry.register("BlueskyRun", "application/json-seq", json_seq_exporter)


def _safe(uri: str) -> str:
    """*uri* without its API key, for messages."""
    return uri.split("?", 1)[0]


@dataclass
class WriterStatus:
    """What the catalog writer is doing."""

    reachable: bool
    queued: int
    pending_runs: list[str]
    written_runs: int
    last_error: str = ""


@dataclass
class _Run:
    uid: str
    spool: Path
    handle: Any
    writer: Any = None  # a TiledWriter while the catalog has every document so far
    dirty: bool = False  # documents the catalog missed: write the run anew from its spool
    stopped: bool = False
    members: set[str] = field(default_factory=set)


class CatalogWriter:
    """Writes documents to the catalog on its own thread (see the module docstring).

    Parameters
    ----------
    connect : callable
        Returns the ``runs`` container; raises when the catalog is unreachable.
    spool_dir : path-like
        Where each run's documents are kept until the catalog has them.
    retry_interval : float
        Seconds between attempts while the catalog is unreachable.
    batch_size : int
        Events per stream gathered into one write (TiledWriter's ``batch_size``).
    """

    def __init__(
        self,
        connect: Any,
        spool_dir: str | Path,
        retry_interval: float = 2.0,
        batch_size: int = 50,
    ) -> None:
        self._connect = connect
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.retry_interval = retry_interval
        self.batch_size = batch_size
        self._queue: queue.Queue = queue.Queue()
        self._runs: dict[str, _Run] = {}
        self._run_of: dict[str, str] = {}  # descriptor / stream_resource / resource uid → run uid
        self._container: Any = None
        self._reachable = True
        self._last_error = ""
        self._written = 0
        self._idle = threading.Condition()
        self._busy = 0
        self._leftovers = sorted(self.spool_dir.glob("*.msgpack"))
        self._thread = threading.Thread(target=self._loop, name="catalog-writer", daemon=True)
        self._thread.start()

    # -- the caller's side: enqueue and return -------------------------------------
    def __call__(self, name: str, doc: dict) -> None:
        with self._idle:
            self._busy += 1
        self._queue.put((name, doc))

    def status(self) -> WriterStatus:
        """Reachable or not, documents queued, runs waiting for the catalog, runs written."""
        return WriterStatus(
            reachable=self._reachable,
            queued=self._queue.qsize(),
            pending_runs=sorted(u for u, r in self._runs.items() if r.dirty),
            written_runs=self._written,
            last_error=self._last_error,
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every document so far is in the catalog; True if that happened in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._busy or self._leftovers or any(r.dirty for r in self._runs.values()):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(0.2 if left is None else min(left, 0.2))
        return True

    def close(self, timeout: float | None = 60) -> None:
        """Write what is queued (within *timeout* s) and stop; spool files left are kept."""
        if not self._thread.is_alive():
            return
        if not self.flush(timeout):
            log.warning(
                "catalog writer closed with documents not yet in the catalog; they are kept in "
                "%s and written when a catalog is next opened on that data directory",
                self.spool_dir,
            )
        self._queue.put(None)
        self._thread.join(timeout=10)

    # -- the writer thread -----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            if not self._reachable or self._leftovers:
                self._recover()
            try:
                item = self._queue.get(timeout=None if self._reachable else self.retry_interval)
            except queue.Empty:
                continue
            if item is None:
                return
            name, doc = item
            try:
                self._handle(name, doc)
            except Exception:
                log.exception("catalog writer: could not spool a %s document", name)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _handle(self, name: str, doc: dict) -> None:
        run = self._spool(name, doc)
        if run is None:
            return
        if self._reachable and not run.dirty:
            try:
                if run.writer is None:
                    run.writer = self._new_writer()
                run.writer(name, doc)
            except Exception as err:
                self._lost(run, err)
        else:
            run.dirty = True
        if name == "stop" and not run.dirty:
            self._finish(run)

    def _spool(self, name: str, doc: dict) -> _Run | None:
        """Append the document to its run's spool file; the run, or None for an orphan."""
        if name == "start":
            uid = doc["uid"]
            path = self.spool_dir / f"{uid}.msgpack"
            handle = path.open("ab")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours: no other process recovers it
            self._runs[uid] = _Run(uid, path, handle)
        else:
            uid = self._run_uid(name, doc)
            if uid not in self._runs:
                log.warning("catalog writer: a %s document of no open run is not stored", name)
                return None
        run = self._runs[uid]
        if name in ("descriptor", "stream_resource", "resource"):
            self._run_of[doc["uid"]] = uid
            run.members.add(doc["uid"])
        run.handle.write(msgpack.packb([name, doc], default=msgpack_numpy.encode))
        run.handle.flush()
        if name == "stop":
            run.stopped = True
            run.handle.close()
        return run

    def _run_uid(self, name: str, doc: dict) -> str | None:
        if "run_start" in doc:
            return doc["run_start"]
        for key in ("descriptor", "stream_resource", "resource"):
            if key in doc:
                return self._run_of.get(doc[key])
        return None

    def _new_writer(self) -> Any:
        from bluesky_tiled_plugins import TiledWriter

        if self._container is None:
            self._container = self._connect()
        return TiledWriter(self._container, batch_size=self.batch_size)

    def _lost(self, run: _Run, err: Exception) -> None:
        run.dirty = True
        run.writer = None
        self._container = None
        self._last_error = f"{type(err).__name__}: {err}"
        if self._reachable:
            self._reachable = False
            log.warning(
                "the catalog cannot be written (%s); documents are kept in %s and written when it "
                "answers again (retrying every %.0f s)",
                self._last_error, self.spool_dir, self.retry_interval,
            )

    def _finish(self, run: _Run) -> None:
        run.spool.unlink(missing_ok=True)
        for member in run.members:
            self._run_of.pop(member, None)
        del self._runs[run.uid]
        self._written += 1
        with self._idle:
            self._idle.notify_all()

    def _recover(self) -> None:
        """Try the catalog; when it answers, write every run that missed documents anew."""
        try:
            self._container = self._connect()
        except Exception as err:
            self._last_error = f"{type(err).__name__}: {err}"
            return
        for path in self._leftovers:
            if path.stem not in self._runs and _unlocked(path):
                self._runs[path.stem] = _Run(path.stem, path, None, dirty=True, stopped=True)
        self._leftovers = []
        for run in [r for r in self._runs.values() if r.dirty]:
            try:
                self._rewrite(run)
            except Exception as err:
                self._lost(run, err)
                return
        if not self._reachable:
            log.warning("the catalog answers again; every spooled document is written")
        self._reachable = True
        self._last_error = ""
        with self._idle:
            self._idle.notify_all()

    def _rewrite(self, run: _Run) -> None:
        """Remove the run's partial copy and write it anew from its spool file."""
        if run.uid in self._container:
            self._container[run.uid].delete(recursive=True, external_only=False)
        writer = self._new_writer()
        n = 0
        for name, doc in read_spool(run.spool):
            writer(name, doc)
            n += 1
        run.writer, run.dirty = writer, False
        log.warning("catalog: run %s written from its spool (%d documents)", run.uid, n)
        if run.stopped:  # (a file left by a process that died counts as stopped)
            self._finish(run)


def _unlocked(path: Path) -> bool:
    """True when no live process holds *path* (a spool file left by one that died)."""
    try:
        with path.open("rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
    except OSError:
        return False


def read_spool(path: str | Path) -> list[tuple[str, dict]]:
    """The documents of a spool file, in order."""
    with Path(path).open("rb") as f:
        unpacker = msgpack.Unpacker(f, object_hook=msgpack_numpy.decode, raw=False)
        return [(name, doc) for name, doc in unpacker]
