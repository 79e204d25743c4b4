"""The catalog writer: every document spooled to local disk first, then written to Tiled.

See :mod:`bluesky_ptycho.storage.catalog` for how it fits with the catalog.
"""

from __future__ import annotations

import fcntl
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import msgpack_numpy

log = logging.getLogger(__name__)


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
                self._last_error,
                self.spool_dir,
                self.retry_interval,
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
