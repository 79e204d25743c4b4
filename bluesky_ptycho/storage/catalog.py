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

One process at a time opens an embedded catalog
(:class:`~bluesky_ptycho.storage.lock.CatalogLock`): a second one stops at
once, naming the process that has it. Processes that share runs share a
Tiled server instead.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from bluesky_ptycho.storage.lock import CatalogLock
from bluesky_ptycho.storage.paths import data_dir
from bluesky_ptycho.storage.scans import AmbiguousScan, ambiguous_message
from bluesky_ptycho.storage.writer import CatalogWriter

log = logging.getLogger(__name__)


RUNS = "runs"


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
        Seconds between attempts to reach an unreachable catalog (or to write a full spool).
    durability : {"process", "machine"}
        What a spooled document survives before the writer returns: the
        process being killed (the default), or a power cut as well (``fsync``).
    spool_dir : path-like, optional
        Where the writer spools (default ``<directory>/spool``).

    Raises
    ------
    bluesky_ptycho.storage.lock.CatalogInUse
        When another process has the embedded catalog of *directory* open
        (the message names it, and says what to do: a Tiled server, or
        another data directory).
    """

    def __init__(
        self,
        uri: str | None = None,
        api_key: str | None = None,
        directory: str | Path | None = None,
        readable_storage: list[str | Path] | tuple = (),
        retry_interval: float = 2.0,
        durability: str = "process",
        spool_dir: str | Path | None = None,
    ) -> None:
        self.directory = Path(directory) if directory is not None else data_dir()
        self.raw_dir = self.directory / "raw"
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        self.server = None
        self.lock: CatalogLock | None = None
        if uri is None:
            from tiled.server import SimpleTiledServer

            self.lock = CatalogLock(self.directory)
            self.lock.acquire()  # or CatalogInUse, naming the process that has it
            try:
                _serve_documents()
                self.server = SimpleTiledServer(
                    self.directory / "catalog",
                    readable_storage=[self.raw_dir, *map(Path, readable_storage)],
                )
            except BaseException:
                self.lock.release()
                raise
            uri = self.server.uri
            _close_when_main_thread_ends(self)
        self.uri = uri
        self.api_key = api_key
        self.location = str(self.directory / "catalog") if self.server else _safe(uri)
        self.runs = self._connect().v3  # Tiled's (v3) client of bluesky runs
        self.writer = CatalogWriter(
            self._connect,
            Path(spool_dir) if spool_dir is not None else self.directory / "spool",
            retry_interval=retry_interval,
            durability=durability,
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
        (the latest), the raw run, not one a stage derived from it.

        Raises
        ------
        KeyError
            When no run matches.
        AmbiguousScan
            When two raw runs have that scan id (data from before the data directory's scan
            counter): the message lists them with their uid and time.
        """
        if isinstance(key, str) and not key.isdigit():
            return self.runs[key].v3  # (v3 even after databroker's v2 view has been made)
        from tiled.queries import Key

        n = int(key)
        if n > 0:
            raw = self.raw_runs(Key("start.scan_id") == n)
        else:
            raw = self.raw_runs(last=-n) if n < 0 else []
        if not raw or (n < 0 and len(raw) < -n):
            what = f"with scan id {n}" if n > 0 else f"at index {n} (of {len(raw)})"
            raise KeyError(f"no raw run {what} in the catalog at {self.location}")
        if n > 0 and len(raw) > 1:
            starts = [r.metadata["start"] for r in raw]
            raise AmbiguousScan(ambiguous_message(n, [(s["uid"], s["time"]) for s in starts]))
        return raw[0].v3

    def raw_runs(self, query: Any = None, last: int | None = None) -> list[Any]:
        """The runs the RunEngine made (not the stages), oldest first, matching a Tiled *query*
        (the *last* ones only, if given)."""
        from tiled.queries import KeyPresent

        found = self.runs.search(KeyPresent("start.stage", False))
        if query is not None:
            found = found.search(query)
        return list(found.values().tail(last) if last else found.values())

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
        """The raw runs through databroker's v1 API (``db[-1].table()``, ``db[uid]``).

        ``db[-1]`` is the last scan and ``db[37]`` scan 37: the runs the stages
        derive are not among them (a uid finds any run). Each header lists its
        derived runs: ``db[-1].derived`` (by stage name).
        """
        return raw_broker(self._connect().v2)  # its own client: v2 run clients, ours stay v3

    def close(self, timeout: float | None = 60) -> None:
        """Write what is queued (within *timeout* s), then stop the writer and the embedded server."""
        self.writer.close(timeout)
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.lock is not None:
            self.lock.release()


def raw_broker(client: Any) -> Any:
    """databroker's ``Broker`` over the raw runs of *client* (a v2 ``runs`` container), whose
    headers also list the runs derived from them (``header.derived``)."""
    from databroker.v1 import Broker, Header
    from tiled.queries import Eq, KeyPresent

    class RunHeader(Header):
        """A run's header; :attr:`derived` opens the runs the stages derived from it."""

        @property
        def derived(self) -> dict[str, Any]:
            """The runs derived from this one, directly or through other stages' runs, by
            stage name (the latest of each)."""
            out: dict[str, Any] = {}
            sources = [self.uid]
            while sources:
                for run in client.search(Eq("start.source_run", sources.pop())).values():
                    start = run.metadata["start"]
                    out[start["stage"]] = RunHeader(run, db)
                    sources.append(start["uid"])
            return out

    class RawBroker(Broker):
        """Integers (scan ids, -1) index the raw runs; a uid finds any run."""

        def __getitem__(self, key: Any) -> Any:
            if isinstance(key, str):
                return RunHeader(client[key], self)
            got = super().__getitem__(key)
            if isinstance(got, list):
                return [RunHeader(h.v2, self) for h in got]
            return RunHeader(got.v2, self)

    db = RawBroker(client.search(KeyPresent("start.stage", False)))
    return db


def _close_when_main_thread_ends(catalog: Catalog) -> None:
    """Close the embedded server when the main thread ends.

    Its thread is not a daemon, so an interactive session that ends without
    ``close()`` would wait for it forever; the main thread counts as ended
    before Python waits for such threads, and this watcher closes it then.
    """

    def watch() -> None:
        threading.main_thread().join()
        catalog.close(timeout=30)

    threading.Thread(target=watch, name="catalog-closer", daemon=True).start()


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
            datums = [
                _datum_for(d, s) for s in seqs for d in by_descriptor.get(doc["descriptor"], [])
            ]
            out[-1:-1] = [("stream_datum", d) for d in datums if d is not None]
    return out


def _datum_for(datum: dict, seq: int) -> dict | None:
    """The part of a StreamDatum that covers event *seq*, or None."""
    s0, s1 = datum["seq_nums"]["start"], datum["seq_nums"]["stop"]
    if not s0 <= seq < s1:
        return None
    i = datum["indices"]["start"] + seq - s0
    return {
        **datum,
        "uid": f"{datum['uid']}/{seq}",
        "seq_nums": {"start": seq, "stop": seq + 1},
        "indices": {"start": i, "stop": i + 1},
    }


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
