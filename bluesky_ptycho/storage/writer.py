"""The catalog writer: every document on local disk before the caller goes on, then in Tiled.

:class:`CatalogWriter` is a callback (``RE.subscribe(writer)``,
``pipeline.subscribe(writer)``). Calling it **appends the document to its
run's spool file** — one record per document, with a checksum, written with
one ``writev`` call — and only then returns. So when the RunEngine moves on,
the document is in the kernel's hands: a process killed with ``kill -9``
loses nothing it had emitted (``durability="machine"`` also ``fsync``\\ s each
record, for a power cut). The document is then written to Tiled on the
writer's own thread (``bluesky_tiled_plugins.TiledWriter``).

A spool file is deleted only when the run's stop document is in the
catalog **and** a read-back agrees: the stop is there and every stream holds
as many events as were spooled. Otherwise the run is written anew from its
spool (its partial copy removed first).

Failures, each loud and none losing what was taken:

- **the catalog is unreachable**: warned once, spooling goes on, retried
  every ``retry_interval`` s; each affected run is written anew when it
  answers.
- **the spool cannot be written** (a full disk, a quota): the operator is
  told at once (an ERROR naming the file and the reason); the documents are
  held in memory, in order, and appended as soon as the disk takes them
  again; :attr:`CatalogWriter.healthy` is False meanwhile and listeners
  (:meth:`CatalogWriter.on_health`) hear of it — the
  :class:`~bluesky_ptycho.storage.guard.SpoolGuard` suspender pauses the
  RunEngine on it, and fails the run if the disk stays full.
- **the process died** (a spool file nobody holds a lock on): the next
  writer on that spool folder writes the run with every document up to the
  last whole record, closed with a stop document that says so
  (``exit_status: "fail"`` and the reason) when there was none.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bluesky_ptycho.io.codec import BadMessage, decode, encode, read_records, record
from bluesky_ptycho.threads import Worker

log = logging.getLogger(__name__)
SUFFIX = ".spool"
DURABILITY = ("process", "machine")


class SpoolError(OSError):
    """The spool cannot be written (its documents are held in memory meanwhile)."""


@dataclass
class WriterStatus:
    """What the catalog writer is doing."""

    reachable: bool
    healthy: bool
    queued: int
    pending_runs: list[str]
    held_documents: int
    written_runs: int
    last_error: str = ""
    spool_error: str = ""


@dataclass
class _Run:
    uid: str
    path: Path
    fd: int | None = None  # our append descriptor (we hold the file's lock) while the run is open
    good: int = 0  # bytes of whole records in the spool file
    held: list[list[Any]] = field(default_factory=list)  # encoded documents the disk refused
    events: Counter = field(default_factory=Counter)  # events spooled per stream
    streams: dict[str, str] = field(default_factory=dict)  # descriptor uid → stream name
    documents: int = 0
    written_upto: int = 0  # documents a rewrite from the spool has written to the catalog
    readbacks: int = 0  # read-backs that disagreed with the spool
    writer: Any = None  # a TiledWriter while the catalog has every document so far
    dirty: bool = False  # documents the catalog missed: write the run anew from its spool
    stopped: bool = False
    members: set[str] = field(default_factory=set)


class CatalogWriter:
    """Spools every document, then writes it to the catalog (see the module docstring).

    Parameters
    ----------
    connect : callable
        Returns the ``runs`` container; raises when the catalog is unreachable.
    spool_dir : path-like
        Where each run's documents are kept until the catalog has them.
    retry_interval : float
        Seconds between attempts while the catalog or the spool fails.
    batch_size : int
        Events per stream gathered into one write (TiledWriter's ``batch_size``).
    durability : {"process", "machine"}
        ``"process"``: a document is in the kernel before the call returns
        (survives the process being killed); ``"machine"``: also on the disk
        (``fsync``; survives a power cut, at a cost per document measured in
        docs/benchmarks.md).
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        spool_dir: str | Path,
        retry_interval: float = 2.0,
        batch_size: int = 50,
        durability: str = "process",
    ) -> None:
        if durability not in DURABILITY:
            raise ValueError(f"durability={durability!r}: choose one of {DURABILITY}")
        self._connect = connect
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.retry_interval = retry_interval
        self.batch_size = batch_size
        self.durability = durability
        self._lock = threading.RLock()
        self._health_listeners: list[Callable[[bool], Any]] = []
        self._runs: dict[str, _Run] = {}
        self._run_of: dict[str, str] = {}  # descriptor / stream_resource / resource uid → run uid
        self._container: Any = None
        self._reachable = True
        self._healthy = True
        self._last_error = ""
        self._spool_error = ""
        self._written = 0
        self.orphans = 0
        self.unstorable = 0
        self._confirmed: set[str] = set()
        # overflow first: a run there is whole, its spool file here only a part of it
        self._leftovers = [
            *(p for d in overflow_dirs(self.spool_dir) for p in sorted(d.glob(f"*{SUFFIX}"))),
            *sorted(self.spool_dir.glob(f"*{SUFFIX}")),
        ]
        self._failed_leftovers: Counter = Counter()
        self._worker = Worker(
            "catalog-writer",
            self._handle,
            idle=self._retry,
            poll=lambda: None if self._settled() else self.retry_interval,
            log=log,
        )
        if self._leftovers:
            self._worker.wake()

    # -- the caller's side: spool, then queue --------------------------------------------
    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        """Spool the document (durable when this returns), then queue it for the catalog."""
        with self._lock:
            got = self._spool(name, doc)
        if got is not None:
            run, index = got
            self._worker.put((run.uid, index, name, doc))

    @property
    def healthy(self) -> bool:
        """False while the spool cannot be written (documents are held in memory)."""
        return self._healthy

    def on_health(self, listener: Callable[[bool], Any]) -> None:
        """Call *listener(healthy)* whenever the spool's health changes (from any thread)."""
        self._health_listeners.append(listener)
        listener(self._healthy)

    def status(self) -> WriterStatus:
        """Reachable or not, spool healthy or not, documents queued and held, runs waiting."""
        with self._lock:
            return WriterStatus(
                reachable=self._reachable,
                healthy=self._healthy,
                queued=self._worker.pending,
                pending_runs=sorted(u for u, r in self._runs.items() if r.dirty or r.held),
                held_documents=sum(len(r.held) for r in self._runs.values()),
                written_runs=self._written,
                last_error=self._last_error,
                spool_error=self._spool_error,
            )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every document so far is in the catalog and confirmed there (the
        spool files of finished runs deleted); True if that happened in time."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            if self._worker.wait_idle(None if left is None else min(left, 0.2)) and self._settled():
                return True
            self._worker.wake()
            time.sleep(0.05)

    def close(self, timeout: float | None = 60) -> None:
        """Write what is queued (within *timeout* s) and stop; spool files left are kept
        (a later writer on this spool folder writes them)."""
        if not self._worker.alive:
            return
        if not self.flush(timeout):
            log.error(
                "catalog writer closed with documents not yet in the catalog; those spooled in "
                "%s are written when a catalog is next opened on that data directory",
                self.spool_dir,
            )
        self._worker.close()
        self._worker.join(10)
        with self._lock:
            self._overflow()
            for run in self._runs.values():
                if run.fd is not None:
                    os.close(run.fd)  # releases the lock: a later writer may recover it
                    run.fd = None

    def _overflow(self) -> None:
        """At the end, runs with documents the disk refused: write each whole (what its
        spool holds, then the held documents) to a folder on another filesystem, which the
        next writer on this spool folder reads too (:func:`overflow_dir`)."""
        for run in [r for r in self._runs.values() if r.held]:
            head = b""
            if run.path.exists():
                with run.path.open("rb") as f:
                    head = f.read(run.good)
            body = b"".join(
                bytes(memoryview(b).cast("B")) for parts in run.held for b in record(parts)
            )
            for folder in overflow_dirs(self.spool_dir):
                target = folder / run.path.name
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    with target.open("wb") as f:
                        f.write(head + body)
                        f.flush()
                        os.fsync(f.fileno())
                except OSError as err:
                    log.warning("could not write run %s's documents to %s either: %s", run.uid,
                                target, err)  # fmt: skip
                    target.unlink(missing_ok=True)
                    continue
                log.error(
                    "run %s: %d documents the spool disk refused are written to %s instead; the "
                    "next catalog opened on this data directory writes them (free space in %s)",
                    run.uid, len(run.held), target, self.spool_dir,
                )  # fmt: skip
                run.held = []
                break
            else:
                log.critical("run %s: %d documents could not be written anywhere and are LOST",
                             run.uid, len(run.held))  # fmt: skip

    def _settled(self) -> bool:
        with self._lock:
            return (
                self._reachable
                and self._healthy
                and not self._leftovers
                and not any(r.dirty or r.held for r in self._runs.values())
            )

    # -- the spool ---------------------------------------------------------------------------
    def _spool(self, name: str, doc: Mapping[str, Any]) -> tuple[_Run, int] | None:
        uid = doc.get("uid") if name == "start" else self._run_uid(name, doc)
        if name != "start" and uid not in self._runs:
            self.orphans += 1
            log.warning("catalog writer: a %s document of no open run is not stored", name)
            return None
        try:
            parts = encode(name, doc, uid)
        except (TypeError, ValueError) as err:  # (the catalog could not store it either)
            self.unstorable += 1
            log.error("a %s document of run %s cannot be stored and is left out: %s", name, uid,
                      err)  # fmt: skip
            return None
        run = self._open(str(uid)) if name == "start" else self._runs[str(uid)]
        if name in ("descriptor", "stream_resource", "resource"):
            self._run_of[doc["uid"]] = run.uid
            run.members.add(doc["uid"])
            if name == "descriptor":
                run.streams[doc["uid"]] = doc.get("name", "primary")
        elif name == "event":
            run.events[run.streams.get(doc["descriptor"], "?")] += 1
        elif name == "event_page":
            run.events[run.streams.get(doc["descriptor"], "?")] += len(doc["seq_num"])
        index = run.documents
        run.documents += 1
        if run.held or not self._append(run, parts):  # (in order: behind what waits already)
            run.held.append(parts)
        if name == "stop":
            run.stopped = True
        return run, index

    def _open(self, uid: str) -> _Run:
        path = self.spool_dir / f"{uid}{SUFFIX}"
        run = _Run(uid, path)
        self._runs[uid] = run
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours: no other process recovers it
            run.fd = fd
        except OSError as err:
            self._spool_failed(run, err)
        return run

    def _append(self, run: _Run, parts: list[Any]) -> bool:
        """Append one record; False (the file cut back to its whole records) when the disk
        refuses it."""
        if run.fd is None:
            try:
                fd = os.open(run.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                run.fd = fd
            except OSError as err:
                self._spool_failed(run, err)
                return False
        buffers = record(parts)
        size = sum(len(memoryview(b).cast("B")) for b in buffers)
        try:
            written = os.writev(run.fd, buffers)
            if written != size:
                raise OSError(errno.ENOSPC, f"wrote {written} of {size} bytes")
            if self.durability == "machine":
                os.fsync(run.fd)
        except OSError as err:
            try:
                os.ftruncate(run.fd, run.good)  # no torn record left behind
            except OSError:
                pass
            self._spool_failed(run, err)
            return False
        run.good += size
        return True

    def _spool_failed(self, run: _Run, err: OSError) -> None:
        self._spool_error = f"{run.path}: {err.strerror or err}"
        if self._healthy:
            log.error(
                "CANNOT SPOOL run %s to %s (%s): its documents are held in memory and written "
                "as soon as the disk takes them again; free space there (the RunEngine pauses "
                "meanwhile where a SpoolGuard is installed)",
                run.uid, run.path, err.strerror or err,
            )  # fmt: skip
            self._set_health(False)
        self._worker.wake()

    def _set_health(self, healthy: bool) -> None:
        self._healthy = healthy
        for listener in list(self._health_listeners):
            try:
                listener(healthy)
            except Exception:
                log.exception("a spool-health listener failed")

    def _retry_spool(self) -> None:
        """Append the documents held in memory, oldest first, while the disk takes them."""
        with self._lock:
            for run in self._runs.values():
                while run.held:
                    if not self._append(run, run.held[0]):
                        return
                    run.held.pop(0)
            if not self._healthy:
                log.warning("the spool takes documents again; every held document is spooled")
                self._spool_error = ""
                self._set_health(True)

    def _run_uid(self, name: str, doc: Mapping[str, Any]) -> str | None:
        if "run_start" in doc:
            return doc["run_start"]
        for key in ("descriptor", "stream_resource", "resource"):
            if key in doc:
                return self._run_of.get(doc[key])
        return None

    # -- the writer's thread: the catalog ------------------------------------------------------
    def _handle(self, item: tuple[str, int, str, Mapping[str, Any]]) -> None:
        uid, index, name, doc = item
        with self._lock:
            run = self._runs.get(uid)
        if run is None or index < run.written_upto:  # (a rewrite from the spool wrote it)
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

    def _retry(self) -> None:
        """Between documents, while something is wrong: the spool, then the catalog."""
        if not self._healthy:
            self._retry_spool()
        if (
            not self._reachable
            or self._leftovers
            or any(r.dirty and not r.held for r in list(self._runs.values()))
        ):
            self._recover()

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
                "the catalog cannot be written (%s); documents are kept in %s and written when "
                "it answers again (retrying every %.0f s)",
                self._last_error, self.spool_dir, self.retry_interval,
            )  # fmt: skip

    def _finish(self, run: _Run) -> None:
        """The run's stop is in the catalog: read it back; if it agrees, drop the spool."""
        if run.held:  # the spool lacks documents: once they are in, write the run from it
            run.dirty, run.writer = True, None
            return
        problem = self._read_back(run.uid, run.events)
        if problem:
            run.readbacks += 1
            if run.readbacks < 3:
                log.warning(
                    "catalog: run %s read back wrong (%s); writing it anew", run.uid, problem
                )
                run.dirty, run.writer = True, None
                return
            log.error("catalog: run %s still reads back wrong after %d writes (%s); its spool "
                      "file %s is kept for the next session", run.uid, run.readbacks, problem,
                      run.path)  # fmt: skip
            with self._lock:
                if run.fd is not None:
                    os.close(run.fd)
                    run.fd = None
                self._runs.pop(run.uid, None)
            return
        with self._lock:
            if run.fd is not None:
                os.close(run.fd)
                run.fd = None
            run.path.unlink(missing_ok=True)
            for member in run.members:
                self._run_of.pop(member, None)
            self._runs.pop(run.uid, None)
            self._written += 1
            self._confirmed.add(run.uid)

    def confirmed(self, uid: str) -> bool:
        """True once run *uid* is in the catalog with its stop, read back and agreeing with
        what was spooled (its spool file deleted)."""
        return uid in self._confirmed

    def _read_back(self, uid: str, events: Counter) -> str:
        """What the catalog's copy of run *uid* lacks ("" when nothing)."""
        try:
            if self._container is None:
                self._container = self._connect()
            stored = self._container[uid]
            stored = getattr(stored, "v3", stored)  # (v2 clients, once databroker's view is made)
            if not stored.metadata.get("stop"):
                return "no stop document"
            for stream, n in events.items():
                if not n:
                    continue
                have = stored[stream]["seq_num"].shape[0] if stream in stored else 0
                if have != n:
                    return f"stream {stream!r} holds {have} events, {n} were spooled"
        except Exception as err:
            return f"{type(err).__name__}: {err}"
        return ""

    def _recover(self) -> None:
        """Try the catalog; when it answers, write every run that missed documents anew."""
        try:
            self._container = self._connect()
        except Exception as err:
            self._last_error = f"{type(err).__name__}: {err}"
            return
        for path in list(self._leftovers):
            try:
                self._recover_file(path)
            except Exception as err:
                self._last_error = f"{type(err).__name__}: {err}"
                self._failed_leftovers[path] += 1
                if self._failed_leftovers[path] < 3:
                    log.warning("catalog: could not write the spool file %s yet (%s)", path, err)
                    continue
                kept = path.with_name(path.name + ".failed")
                path.rename(kept)
                log.error("catalog: the spool file %s could not be written in 3 tries (%s); "
                          "kept as %s", path, self._last_error, kept)  # fmt: skip
            with self._lock:
                self._leftovers.remove(path)
        for run in [r for r in list(self._runs.values()) if r.dirty and not r.held]:
            try:
                self._rewrite(run)
            except Exception as err:
                self._lost(run, err)
                return
        if not self._reachable:
            log.warning("the catalog answers again; every spooled document is written")
        self._reachable = True
        self._last_error = ""

    def _rewrite(self, run: _Run) -> None:
        """Remove the run's partial copy and write it anew from its spool file; the writer
        that did it takes the run's next documents."""
        docs, _ = read_spool_file(run.path)
        writer = self._write_all(run.uid, docs)
        run.writer, run.dirty, run.written_upto = writer, False, len(docs)
        log.warning("catalog: run %s written from its spool (%d documents)", run.uid, len(docs))
        if run.stopped and len(docs) == run.documents:
            self._finish(run)

    def _write_all(self, uid: str, docs: list[tuple[str, dict]]) -> Any:
        if uid in self._container:
            self._container[uid].delete(recursive=True, external_only=False)
        writer = self._new_writer()
        for name, doc in docs:
            writer(name, doc)
        return writer

    def _recover_file(self, path: Path) -> None:
        """A spool file left by a process that died: write its run, closed, and drop it."""
        uid = path.name[: -len(SUFFIX)]
        with self._lock:
            if uid in self._runs:
                return
        if uid in self._confirmed and path.parent == self.spool_dir:
            path.unlink()  # its whole run came from the overflow folder
            return
        fd = os.open(path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # a live process holds it
            docs, dropped = read_spool_file(path)
            if not docs or docs[0][0] != "start":
                bad = path.with_name(path.name + ".bad")
                path.rename(bad)
                log.error("catalog: spool file %s holds no start document; kept as %s", path, bad)
                return
            if dropped:
                log.warning("catalog: %s ends in a torn record (%d bytes, the crash's last "
                            "write); the %d whole documents before it are kept", path, dropped,
                            len(docs))  # fmt: skip
            if docs[-1][0] != "stop":
                docs.append(("stop", dead_run_stop(docs)))
            self._write_all(uid, docs)
            events: Counter = Counter()
            streams = {d["uid"]: d.get("name", "primary") for n, d in docs if n == "descriptor"}
            for n, d in docs:
                if n == "event":
                    events[streams.get(d["descriptor"], "?")] += 1
                elif n == "event_page":
                    events[streams.get(d["descriptor"], "?")] += len(d["seq_num"])
            problem = self._read_back(uid, events)
            if problem:
                raise RuntimeError(f"run {uid} read back wrong after recovery: {problem}")
            path.unlink()
            if path.parent != self.spool_dir:
                (self.spool_dir / path.name).unlink(missing_ok=True)
            self._written += 1
            self._confirmed.add(uid)
            log.warning(
                "catalog: run %s, left by a process that ended, written from its spool (%d "
                "documents, stop: %s)", uid, len(docs), docs[-1][1].get("exit_status"),
            )  # fmt: skip
        finally:
            os.close(fd)


def overflow_dirs(spool_dir: Path) -> list[Path]:
    """Where a spool folder's runs go when its disk refuses them at the end: a folder named
    after it in shared memory (``/dev/shm``) or, failing that, the temporary folder."""
    import hashlib
    import tempfile

    tag = hashlib.sha1(str(Path(spool_dir).resolve()).encode()).hexdigest()[:12]
    roots = [Path("/dev/shm"), Path(tempfile.gettempdir())]
    return [r / f"bluesky_ptycho-spool-{tag}" for r in roots if r.is_dir()]


def dead_run_stop(docs: list[tuple[str, dict]]) -> dict:
    """The stop document of a run whose process ended before it (``exit_status: "fail"``)."""
    start = docs[0][1]
    streams = {d["uid"]: d.get("name", "primary") for n, d in docs if n == "descriptor"}
    counts: Counter = Counter()
    last = start.get("time", time.time())
    for name, doc in docs:
        if name == "event":
            counts[streams.get(doc["descriptor"], "?")] += 1
        elif name == "event_page":
            counts[streams.get(doc["descriptor"], "?")] += len(doc["seq_num"])
        t = doc.get("time")
        if isinstance(t, int | float):
            last = max(last, t)
        elif isinstance(t, list) and t:
            last = max(last, max(t))
    return {
        "uid": str(uuid.uuid4()),
        "time": last,
        "run_start": start["uid"],
        "exit_status": "fail",
        "reason": "the process writing this run ended before its stop document; recovered "
        "from its spool with every document up to the end",
        "num_events": {s: counts.get(s, 0) for s in streams.values()},
    }


def read_spool_file(path: str | Path) -> tuple[list[tuple[str, dict]], int]:
    """The documents of a spool file, in order, and the bytes of a torn record at its end.

    Decoded strictly (:func:`bluesky_ptycho.io.codec.decode`): nothing in a spool
    file can run code. A record that does not decode ends the reading, like a torn one.
    """
    path = Path(path)
    docs: list[tuple[str, dict]] = []
    with path.open("rb") as f:
        records = read_records(f)
        while True:
            at = f.tell()
            parts = next(records, None)
            if parts is None:
                break
            try:
                name, doc, _run = decode(parts)
            except BadMessage as err:
                log.error("spool file %s: a record that is not a document (%s); reading stops",
                          path, err)  # fmt: skip
                f.seek(at)
                break
            docs.append((name, _owned(doc)))
        dropped = path.stat().st_size - f.tell()
    return docs, max(dropped, 0)


def read_spool(path: str | Path) -> list[tuple[str, dict]]:
    """The documents of a spool file, in order (see :func:`read_spool_file`)."""
    return read_spool_file(path)[0]


def _owned(value: Any) -> Any:
    """Arrays decoded from a file's bytes, copied out of them (the bytes are freed)."""
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, dict):
        return {k: _owned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_owned(v) for v in value]
    return value
