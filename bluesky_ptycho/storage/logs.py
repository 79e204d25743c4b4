"""Logging: the console, one log file per run, and ``bluesky-ptycho logs --follow``.

Every module logs through ``logging`` under ``bluesky_ptycho`` (stages as
``bluesky_ptycho.stages.<name>``). :func:`console` shows warnings on the
terminal (and, for ``serve``, each run's first and last line: records logged
with :data:`SUMMARY` in their ``extra``); :func:`run_log_handler` sends
everything from INFO up, while a run's pipeline works, to
``<log dir>/<time>_scan<id>_<uid>.log`` (``…_<uid>-replay.log`` for a replay,
stamped with the time of the replay; the paper's
``~/.nanosurveyor/streaming/log``; the log dir is
:func:`bluesky_ptycho.storage.paths.log_dir`). A run's log ends with what it
made: each stage's summary line, the files written, the derived runs, and one
line for the run as a whole.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from bluesky_ptycho.storage.scans import AmbiguousScan, ambiguous_message
from bluesky_ptycho.threads import current_run

ROOT = "bluesky_ptycho"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: ``extra`` of the INFO records a quiet console shows too (a run began, a run ended)
SUMMARY = {"summary": True}
#: what a replay's log file name ends with (after the uid)
REPLAY_SUFFIX = "-replay"


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (IPython, pytest and Jupyter
    swap it; a handler that kept the stream of its creation would write to a closed file)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class _ConsoleFilter(logging.Filter):
    """Passes records of *level* and above, and the INFO ones marked :data:`SUMMARY` when
    *summaries* is True."""

    def __init__(self, level: int, summaries: bool) -> None:
        super().__init__()
        self.level, self.summaries = level, summaries

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or (
            self.summaries and getattr(record, "summary", False) and record.levelno >= logging.INFO
        )


def console(level: int = logging.WARNING, summaries: bool = False) -> logging.Handler:
    """Show *level* and above from bluesky_ptycho on stderr (once, however often called);
    with *summaries*, also the INFO lines marked :data:`SUMMARY` (a run's start and end)."""
    logger = logging.getLogger(ROOT)
    handler = next((h for h in logger.handlers if getattr(h, "_ptycho_console", False)), None)
    if handler is None:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._ptycho_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    for f in [f for f in handler.filters if isinstance(f, _ConsoleFilter)]:
        handler.removeFilter(f)
    handler.addFilter(_ConsoleFilter(level, summaries))
    lowest = min(level, logging.INFO) if summaries else level
    handler.setLevel(lowest)
    if logger.getEffectiveLevel() > lowest:
        logger.setLevel(lowest)
    return handler


class RunFilter(logging.Filter):
    """Passes the records of one run: logged by a thread working for it
    (:func:`bluesky_ptycho.threads.bind_run`) or naming it (``extra={"run": uid}``)."""

    def __init__(self, uid: str) -> None:
        super().__init__()
        self.uid = uid

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "run", None) == self.uid or current_run() == self.uid


def run_log_handler(folder: str | Path, start: dict, replay: bool = False) -> logging.Handler:
    """Start the log file of the run whose start document is *start*; returns its handler.

    The file receives that run's messages only (:class:`RunFilter`). A *replay* of a stored
    run gets a file of its own (stamped now, its name ending in :data:`REPLAY_SUFFIX`),
    next to the live run's.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    when = time.time() if replay else start.get("time", time.time())
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    scan = start.get("scan_id", 0)
    scan = scan if isinstance(scan, int) and not isinstance(scan, bool) else 0
    uid = str(start["uid"])
    safe_uid = "".join(c for c in uid[:64] if c.isalnum() or c == "-") or "run"
    path = folder / f"{stamp}_scan{scan}_{safe_uid}{REPLAY_SUFFIX if replay else ''}.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(RunFilter(uid))
    logger = logging.getLogger(ROOT)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.info(
        "%s %s (scan %s, plan %s) started; log %s", "replay of run" if replay else "run", uid,
        scan, start.get("plan_name"), path, extra={"run": uid, **SUMMARY},
    )  # fmt: skip
    return handler


def close_run_log(handler: logging.Handler | None) -> None:
    """Finish a run's log file."""
    if handler is None:
        return
    uid = next((f.uid for f in handler.filters if isinstance(f, RunFilter)), None)
    logging.getLogger(ROOT).info("the pipeline has finished this run", extra={"run": uid})
    logging.getLogger(ROOT).removeHandler(handler)
    handler.close()


def log_files(folder: str | Path) -> list[Path]:
    """The run log files in *folder*, oldest first."""
    return sorted(Path(folder).glob("*_scan*_*.log"))


def find_log(folder: str | Path, run: str | None = None, uid: bool = False) -> Path:
    """The log of *run*, or the latest when None.

    *run* is a scan id when it is a number (``"37"``); a uid prefix when it is
    not, when *uid* is True, or when it is six or more digits and no run has
    that scan id (a uid may start with eight decimal digits; a short number
    that is no scan's is refused rather than read as some uid's start).

    Raises
    ------
    FileNotFoundError
        When no log matches.
    AmbiguousScan
        When logs of two runs have scan id *run* (runs from before the data
        directory's scan counter); the message lists them.
    """
    files = log_files(folder)
    if run is not None:
        run = run.strip().lower()
        by_scan = [] if uid or not run.isdigit() else [f for f in files if _scan_of(f) == int(run)]
        runs: dict[str, float] = {}  # the runs with that number (a run and its replays: one)
        for f in by_scan:
            key = _uid_of(f).removesuffix(REPLAY_SUFFIX)
            runs[key] = min(runs.get(key, float("inf")), _time_of(f))
        if len(runs) > 1:
            raise AmbiguousScan(ambiguous_message(int(run), sorted(runs.items(), key=_second)))
        if not by_scan and not uid and run.isdigit() and len(run) < 6:
            raise FileNotFoundError(
                f"no run log of scan {run} in {folder}; to read {run!r} as the start of a uid "
                "instead, give --uid (`bluesky-ptycho runs` lists the scans)"
            )
        files = by_scan or [f for f in files if _uid_of(f).startswith(run)]
    if not files:
        what = f"for run {run!r}" if run else "yet"
        raise FileNotFoundError(
            f"no run log {what} in {folder}; runs write one there while their "
            "pipeline works (set BLUESKY_PTYCHO_LOGS to look elsewhere)"
        )
    return files[-1]


def _scan_of(path: Path) -> int | None:
    scan = path.stem.split("_", 2)[1].removeprefix("scan")
    return int(scan) if scan.isdigit() else None


def _uid_of(path: Path) -> str:
    return path.stem.split("_", 2)[2]


def _time_of(path: Path) -> float:
    try:
        return time.mktime(time.strptime(path.stem.split("_", 1)[0], "%Y%m%d-%H%M%S"))
    except ValueError:
        return path.stat().st_mtime


def _second(item: tuple[str, float]) -> float:
    return item[1]


def follow(
    folder: str | Path,
    path: Path,
    out: TextIO = sys.stdout,
    poll: float = 0.5,
    stop_after: float | None = None,
) -> None:
    """Print *path* and what is added to it; move on to each newer run's log as it appears.

    Runs until interrupted, or for *stop_after* seconds.
    """
    t_end = None if stop_after is None else time.monotonic() + stop_after
    for line in _tail(folder, path, poll):
        out.write(line)
        out.flush()
        if t_end is not None and time.monotonic() > t_end:
            return


def _tail(folder: str | Path, path: Path, poll: float) -> Iterator[str]:
    f = path.open(encoding="utf-8")
    yield f"==> {path} <==\n"
    try:
        while True:
            line = f.readline()
            if line:
                yield line
                continue
            newer = [p for p in log_files(folder) if p.name > path.name]
            if newer:
                f.close()
                path = newer[0]
                f = path.open(encoding="utf-8")
                yield f"==> {path} <==\n"
                continue
            time.sleep(poll)
            yield ""
    finally:
        f.close()
