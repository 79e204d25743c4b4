"""Pause the RunEngine while a disk the scan writes to is full; fail the run if it stays so.

A scan must not carry on unrecorded, nor crash on a full disk. Two guards,
each an Ophyd signal watched by a bluesky ``SuspendBoolLow`` suspender:

- :class:`SpoolGuard` watches a
  :class:`~bluesky_ptycho.storage.writer.CatalogWriter`'s health: when the
  disk refuses the spool the RunEngine suspends at its next step (the
  documents already emitted are held in memory by the writer).
- :class:`FramesDiskGuard` watches the free space of the folder the detector
  writes its frame files to, as this host sees it: the RunEngine suspends
  while fewer than ``frames_ahead`` frames fit, before the detector would
  have to refuse one (:meth:`bluesky_ptycho.io.frames.FrameFileWriter.append`),
  and goes on once twice that fits (so that it does not stop and start at
  every frame).

When the disk takes data again the scan resumes where it was. If it does not
within ``give_up`` seconds, the suspension ends in an error (:class:`SpoolFull`,
:class:`FramesDiskFull`) and the run fails with a stop document that says
why — the RunEngine's call raises, so a script or the demo ends with a
non-zero status. A plan started while the guard is tripped waits the same
way and is refused if the wait runs out (the guard's preprocessor: a
RunEngine that starts on a tripped suspender runs no post-plan). Each plan
gets its own wait. ::

    SpoolGuard(catalog.writer).install(RE)
    FramesDiskGuard(catalog.raw_dir, frame_bytes=RAW_FRAME_BYTES).install(RE)

One thread a guard owns its state: it looks every ``interval`` seconds (the
spool guard also when the writer reports a change) and keeps the deadline.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from bluesky.suspenders import SuspendBoolLow
from ophyd import Signal

from bluesky_ptycho.io.frames import SPACE_RESERVE, free_bytes
from bluesky_ptycho.storage.writer import CatalogWriter

log = logging.getLogger(__name__)


class SpoolFull(RuntimeError):
    """The spool stayed unwritable longer than the guard waits."""


class FramesDiskFull(RuntimeError):
    """The frames' disk stayed full longer than the guard waits."""


class _Guard:
    """A signal a suspender watches, kept by one watching thread; see the module docstring."""

    def __init__(self, name: str, give_up: float, interval: float, tripped_message: str) -> None:
        if not 0 < give_up <= 86400:
            raise ValueError(
                f"{type(self).__name__}(give_up={give_up}): give seconds in (0, 86400]"
            )
        if not 0.05 <= interval <= 60:
            raise ValueError(
                f"{type(self).__name__}(interval={interval}): give seconds in [0.05, 60]"
            )
        self.give_up = give_up
        self.interval = interval
        self.ok = Signal(name=name, value=1)
        self.failed = False  # gave up; the next step of a plan (or its start) raises
        self.RE: Any = None
        self.suspender = SuspendBoolLow(
            self.ok, sleep=0, post_plan=self._after, tripped_message=tripped_message
        )
        self._lock = threading.Lock()
        self._bad_since: float | None = None  # when the present trip began
        self._said: str | None = None
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._loop, name=f"{name}-guard", daemon=True)

    def _start(self) -> None:
        self._check()
        self._watch.start()

    def install(self, RE: Any) -> None:
        """Install the suspender on RunEngine *RE*, and the preprocessor that refuses a plan
        whose wait at its start ran out."""
        self.RE = RE
        RE.install_suspender(self.suspender)
        RE.preprocessors.append(self._refuse_when_given_up)

    def close(self) -> None:
        """Stop watching, take the suspender and the preprocessor off the RunEngine."""
        self._stop.set()
        if self._watch.is_alive():
            self._watch.join(5)
        if self.RE is not None:
            self.RE.remove_suspender(self.suspender)
            if self._refuse_when_given_up in self.RE.preprocessors:
                self.RE.preprocessors.remove(self._refuse_when_given_up)
            self.RE = None

    def _put(self, value: int) -> None:
        """Set the signal on the RunEngine's event loop: the suspender makes its asyncio
        event there (from another thread it may fail to, when the loop is busy)."""
        if self.RE is None:
            self.ok.put(value)
            return
        try:
            self.RE.loop.call_soon_threadsafe(self.ok.put, value)
        except RuntimeError:  # the loop is closed: no RunEngine left to pause
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._check()

    def _check(self) -> None:
        """Look once; trip, clear or give up. Called by the watching thread (and the spool
        writer's health reports); the lock keeps the state whole."""
        if self._stop.is_set():
            return
        try:
            healthy = self._healthy(tripped=self._bad_since is not None)
            said = None
        except OSError as err:  # the folder unmounted, a stale NFS handle: nothing can be written
            healthy, said = False, f"{type(self).__name__}: cannot look at the disk: {err}"
        if said != self._said and said is not None:
            log.warning("%s", said)
        self._said = said
        with self._lock:
            if healthy:
                if self._bad_since is not None:
                    self._bad_since = None
                    self._put(1)
                self.failed = False
                return
            if self.failed:  # given up; waits for the plan to take it (_after, the preprocessor)
                return
            now = time.monotonic()
            if self._bad_since is None:
                self._bad_since = now
                self._put(0)
            elif now - self._bad_since >= self.give_up:
                self._bad_since = None
                self.failed = True
                self._put(1)  # ends the suspension; _after (or the preprocessor) fails the plan

    def _take_failure(self) -> RuntimeError | None:
        """The error to raise if the guard gave up (once; the next look trips anew)."""
        with self._lock:
            if not self.failed:
                return None
            self.failed = False
        return self._failure()

    def _after(self) -> Generator[Any, None, None]:
        err = self._take_failure()
        if err is not None:
            raise err
        yield from ()

    def _refuse_when_given_up(self, plan: Any) -> Generator[Any, Any, Any]:
        def checked() -> Generator[Any, Any, Any]:
            err = self._take_failure()
            if err is not None:
                raise err
            return (yield from plan)

        return checked()

    def _healthy(self, tripped: bool) -> bool:
        raise NotImplementedError

    def _failure(self) -> RuntimeError:
        raise NotImplementedError


class SpoolGuard(_Guard):
    """A suspender on the writer's spool health (see the module docstring).

    Parameters
    ----------
    writer : CatalogWriter
    give_up : float
        Seconds the scan waits for the disk before the run fails.
    interval : float
        Seconds between two looks for the deadline (health changes are taken at once).
    """

    def __init__(self, writer: CatalogWriter, give_up: float = 600.0, interval: float = 0.5):
        super().__init__(
            "spool_ok",
            give_up,
            interval,
            f"the spool in {writer.spool_dir} cannot be written (disk full?): "
            f"the scan waits up to {give_up:.0f} s for space, then the run fails",
        )
        self.writer = writer
        writer.on_health(lambda healthy: self._check())
        self._start()

    def _healthy(self, tripped: bool) -> bool:
        return self.writer.healthy

    def _failure(self) -> RuntimeError:
        return SpoolFull(
            f"the spool in {self.writer.spool_dir} stayed unwritable for {self.give_up:.0f} s "
            f"({self.writer.status().spool_error}); the run is stopped. Documents taken "
            "so far are held in memory and written when the disk takes them again"
        )


class FramesDiskGuard(_Guard):
    """A suspender on the free space of the frames' folder (see the module docstring).

    Parameters
    ----------
    folder : path-like
        Where the detector writes its frame files (or the nearest folder above it
        that exists), as this host sees it: with an EPICS detector, the same disk
        as the IOC's file plugin writes to only where the two share it.
    frame_bytes : int
        Bytes of one frame as the detector writes it.
    frames_ahead : int
        The scan pauses while fewer frames than this fit (beside the
        :data:`~bluesky_ptycho.io.frames.SPACE_RESERVE` the writer keeps free),
        and goes on once twice as many fit. Enough for the frames taken in one
        *interval*: 20 at 0.5 s covers 40 frames/s.
    give_up : float
        Seconds the scan waits for space before the run fails.
    interval : float
        Seconds between two looks at the free space.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        frame_bytes: int,
        frames_ahead: int = 20,
        give_up: float = 600.0,
        interval: float = 0.5,
    ) -> None:
        if not (isinstance(frame_bytes, int) and frame_bytes > 0):
            raise ValueError(f"FramesDiskGuard(frame_bytes={frame_bytes!r}): give a byte count > 0")
        if not (isinstance(frames_ahead, int) and frames_ahead >= 1):
            raise ValueError(
                f"FramesDiskGuard(frames_ahead={frames_ahead!r}): give a whole number >= 1"
            )
        super().__init__(
            "frames_disk_ok",
            give_up,
            interval,
            f"the frames' disk ({folder}) has room for fewer than {frames_ahead} frames: "
            f"the scan waits up to {give_up:.0f} s for space, then the run fails",
        )
        self.folder = Path(folder)
        self.need = frames_ahead * frame_bytes + SPACE_RESERVE
        self.resume_at = 2 * frames_ahead * frame_bytes + SPACE_RESERVE
        self._start()

    def free(self) -> int:
        """Bytes free for this user on the frames' disk."""
        return free_bytes(self.folder)

    def _healthy(self, tripped: bool) -> bool:
        return self.free() >= (self.resume_at if tripped else self.need)

    def _failure(self) -> RuntimeError:
        try:
            free = f"{self.free() / 2**20:.0f} MiB free"
        except OSError as err:
            free = f"its free space unknown: {err}"
        return FramesDiskFull(
            f"the frames' disk ({self.folder}) stayed full for {self.give_up:.0f} s "
            f"({free}, {self.need / 2**20:.0f} MiB needed); the run is stopped. The frames "
            "taken so far are kept; free space there and take the scan again"
        )
