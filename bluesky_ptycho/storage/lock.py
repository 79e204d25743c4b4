"""One process at a time on an embedded catalog: a lock that dies with its process.

The embedded catalog (:class:`~bluesky_ptycho.storage.catalog.Catalog` with no
URI) is a Tiled server inside the process that opened it, over files in the
data directory: a SQLite database, a DuckDB file for the event tables, zarr
arrays. Two processes on the same files each run their own server; DuckDB
lets one of them write, so the other's runs lose their streams without a
word. :class:`CatalogLock` makes the second opener stop instead, saying who
holds the catalog and what to do.

The lock is ``flock`` on ``<data dir>/catalog.lock``: the kernel drops it
when the holder's process ends, however it ends (``kill -9`` included), so a
lock is never stale. The file also says who took it (pid, command line,
since when) for the message; what it says is only read while the lock is
held, so words left by a dead process are never believed.

Reading the list of runs needs no lock (``bluesky-ptycho runs`` reads the
SQLite database directly, read-only, which SQLite allows while another
process writes).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

LOCK_NAME = "catalog.lock"


class CatalogInUse(RuntimeError):
    """Another process (or another Catalog of this one) holds the embedded catalog."""


class CatalogLock:
    """The exclusive hold of one data directory's embedded catalog.

    Parameters
    ----------
    directory : path-like
        The data directory (the lock file is ``<directory>/catalog.lock``).

    Raises
    ------
    CatalogInUse
        From :meth:`acquire`, when another holder has it; the message names
        the holder (pid, command line, since when) and what to do instead.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`CatalogInUse`."""
        if self._fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise CatalogInUse(in_use_message(self.directory, holder)) from None
        except BaseException:
            os.close(fd)
            raise
        me = json.dumps(
            {"pid": os.getpid(), "command": _command_line(), "since": time.time()}
        ).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
        self._fd = fd

    def release(self) -> None:
        """Let the next process have the catalog (also done by the kernel when this one ends)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # nobody holds it: say nothing of the last holder
        os.close(fd)  # (closing drops the flock)

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock now (pid, command, since), or None when nobody does."""
        if self._fd is not None:
            return _read(self._fd)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read(fd) or {}
            return None
        finally:
            os.close(fd)

    def __enter__(self) -> CatalogLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def in_use_message(directory: Path, holder: dict[str, Any] | None) -> str:
    """What the second opener of an embedded catalog is told."""
    holder = holder or {}
    pid = holder.get("pid", "?")
    since = holder.get("since")
    try:  # (the file is the holder's words: a hand-edited one may say anything)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(since or "nan")))
    except (TypeError, ValueError, OverflowError, OSError):
        when = "?"
    who = (
        "this process already has it open (close that Catalog first, or use it)"
        if pid == os.getpid()
        else f"process {pid} ({holder.get('command') or 'command unknown'}) has it open "
        f"since {when}"
    )
    return (
        f"the embedded catalog in {directory / 'catalog'} is in use: {who}. One process at a "
        "time writes an embedded catalog. To share one between processes, run a Tiled server "
        "(`tiled serve catalog ...`, README: a Tiled server) and give both its address "
        "(--catalog URI, or BLUESKY_PTYCHO_CATALOG); or give this process another data "
        "directory (BLUESKY_PTYCHO_DATA); or stop the other process. "
        "`bluesky-ptycho runs` lists the runs meanwhile"
    )


def _read(fd: int) -> dict[str, Any] | None:
    try:
        text = os.pread(fd, 4096, 0)
        got = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None


def _command_line() -> str:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["python"]
    if argv[0] in ("-c", "-m"):
        argv.insert(0, "python")
    line = " ".join(argv)
    return line if len(line) <= 200 else line[:197] + "..."
