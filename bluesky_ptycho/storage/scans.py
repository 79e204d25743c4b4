"""One scan counter per data directory, for every process that scans there.

The RunEngine numbers its runs with ``scan_id_source`` (bluesky's default adds
one to ``RE.md["scan_id"]``, which starts at 1 in every new RunEngine: the
demo and a session would both make "scan 1"). :class:`ScanCounter` is a
``scan_id_source`` that keeps the last number in ``<data dir>/scan_id``,
read and written under ``flock``, so the demo, the IPython profile and any
other RunEngine on that data directory take the next number whichever ran
last, across processes and sessions::

    RE = RunEngine({}, scan_id_source=ScanCounter())

The counter never goes below the highest scan id already in the data
directory's embedded catalog (data from before the counter keeps its numbers;
a counter file edited by hand, lowered or garbled, gives no number twice) nor
below ``RE.md["scan_id"]`` (a session's persisted metadata).

Data from before the counter may hold two scans of one number: a look-up by
that number is then an error (:class:`AmbiguousScan`) that lists them.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
FILE_NAME = "scan_id"
#: the largest scan id kept: the largest integer JSON numbers (Tiled's metadata, a
#: browser) hold exactly
MAX_SCAN_ID = 2**53 - 1


class AmbiguousScan(LookupError):
    """Two or more raw runs have the scan id asked for."""


def ambiguous_message(scan_id: int, runs: list[tuple[str, float]]) -> str:
    """Says which runs (uid, start time) have scan id *scan_id*, and how to pick one."""
    import datetime

    def when(t: float) -> str:
        return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")

    listed = "; ".join(f"{uid} started {when(t)}" for uid, t in runs)
    return (
        f"scan {scan_id} is ambiguous: {len(runs)} runs have that number ({listed}); give "
        f"the start of a uid instead, e.g. {runs[-1][0][:8]} for the latest"
    )


class ScanCounter:
    """A ``scan_id_source`` shared through a file in the data directory.

    Parameters
    ----------
    directory : path-like, optional
        The data directory (default :func:`~bluesky_ptycho.storage.paths.data_dir`).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        from bluesky_ptycho.storage.paths import data_dir

        self.directory = Path(directory) if directory is not None else data_dir()
        self.path = self.directory / FILE_NAME

    def __call__(self, md: Mapping[str, Any]) -> int:
        """The next scan id (and remember it): one more than the last one any process took."""
        floor = md.get("scan_id", 0)
        floor = floor if isinstance(floor, int) and not isinstance(floor, bool) else 0
        try:
            with self._locked() as fd:
                new = max(self._last(fd), min(floor, MAX_SCAN_ID - 1)) + 1
                data = f"{new}\n".encode()
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
        except OSError as err:  # (the RunEngine then opens no run: nothing is taken unnumbered)
            raise OSError(
                err.errno,
                f"the scan counter {self.path} cannot be updated ({err.strerror or err}); "
                "free space or fix the permissions of the data directory (BLUESKY_PTYCHO_DATA)",
            ) from err
        return new

    def last(self) -> int:
        """The last scan id taken on this data directory (0 when none)."""
        with self._locked() as fd:
            return self._last(fd)

    def _locked(self) -> _Locked:
        self.directory.mkdir(parents=True, exist_ok=True)
        return _Locked(self.path)

    def _last(self, fd: int) -> int:
        """The file's number, or the catalog's highest scan id where that is higher (a
        counter lowered by hand) or the file holds no usable number (warned)."""
        from bluesky_ptycho.storage.listing import highest_scan_id

        raw = os.pread(fd, 64, 0)
        text = raw.decode(errors="replace").strip()
        try:
            seen = highest_scan_id(self.directory, below=MAX_SCAN_ID)
        except (OSError, sqlite3.Error) as err:  # a damaged catalog: the file's number stands
            log.warning("the scan counter cannot read the catalog's scan ids (%s)", err)
            seen = 0
        number = int(text) if text.isascii() and text.isdigit() and len(raw) < 64 else None
        if number is None or number > MAX_SCAN_ID:
            if text:
                log.warning("the scan counter %s held %r, not a scan id (0 to %d); counting "
                            "on from the catalog's highest scan id, %d", self.path,
                            text[:40], MAX_SCAN_ID, seen)  # fmt: skip
            return seen
        if number < seen:
            log.warning("the scan counter %s held %d, below the catalog's highest scan id %d; "
                        "counting on from %d", self.path, number, seen, seen)  # fmt: skip
        return max(number, seen)


class _Locked:
    """The counter file, open and exclusively locked (waits for another process's turn)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> int:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(self.fd)
            raise
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # (drops the lock)
