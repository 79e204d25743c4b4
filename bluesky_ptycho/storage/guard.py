"""Pause the RunEngine while a disk the scan writes to is full; fail the run if it stays so.

A scan must not carry on unrecorded, nor crash on a full disk. Two guards,
each an Ophyd signal watched by a bluesky ``SuspendBoolLow`` suspender:

- :class:`SpoolGuard` watches a
  :class:`~bluesky_ptycho.storage.writer.CatalogWriter`'s health: when the
  disk refuses the spool the RunEngine suspends at its next step (the
  documents already emitted are held in memory by the writer).
- :class:`FramesDiskGuard` watches the free space of the folder the detector
  writes its frame files to (``statvfs``, twice a second): the RunEngine
  suspends while fewer than ``frames_ahead`` frames fit, before the detector
  would have to refuse one (:meth:`bluesky_ptycho.io.frames.FrameFileWriter.append`).

When the disk takes data again the scan resumes where it was. If it does not
within ``give_up`` seconds, the suspension ends in an error (:class:`SpoolFull`,
:class:`FramesDiskFull`) and the run fails with a stop document that says
why — the RunEngine's call raises, so a script or the demo ends with a
non-zero status::

    SpoolGuard(catalog.writer).install(RE)
    FramesDiskGuard(catalog.raw_dir, frame_bytes=4_469_760).install(RE)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

from bluesky.suspenders import SuspendBoolLow
from ophyd import Signal

from bluesky_ptycho.io.frames import SPACE_RESERVE
from bluesky_ptycho.storage.writer import CatalogWriter


class SpoolFull(RuntimeError):
    """The spool stayed unwritable longer than the guard waits."""


class FramesDiskFull(RuntimeError):
    """The frames' disk stayed full longer than the guard waits."""


class _Guard:
    """A signal a suspender watches, and a timer that fails the run after *give_up* s."""

    def __init__(self, name: str, give_up: float, tripped_message: str) -> None:
        if not 0 < give_up <= 86400:
            raise ValueError(
                f"{type(self).__name__}(give_up={give_up}): give seconds in (0, 86400]"
            )
        self.give_up = give_up
        self.ok = Signal(name=name, value=1)
        self.failed = False
        self.RE: Any = None
        self._timer: threading.Timer | None = None
        self.suspender = SuspendBoolLow(
            self.ok, sleep=0, post_plan=self._after, tripped_message=tripped_message
        )

    def install(self, RE: Any) -> None:
        """Install the suspender on RunEngine *RE*, and a preprocessor that refuses a plan
        the guard gave up on before it began (a RunEngine that starts with a tripped
        suspender waits, then starts the plan without the suspender's post-plan)."""
        self.RE = RE
        RE.install_suspender(self.suspender)
        RE.preprocessors.append(self._refuse_when_given_up)

    def _refuse_when_given_up(self, plan: Any) -> Generator[Any, Any, Any]:
        def checked() -> Generator[Any, Any, Any]:
            if self.failed and not self._healthy():
                raise self._failure()
            return (yield from plan)

        return checked()

    def _put(self, value: int) -> None:
        """Set the signal on the RunEngine's event loop: the suspender makes its asyncio
        event there (from another thread it may fail to, when the loop is busy)."""
        if self.RE is None:
            self.ok.put(value)
        else:
            self.RE.loop.call_soon_threadsafe(self.ok.put, value)

    def _health(self, healthy: bool) -> None:
        if healthy:
            self.failed = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._put(1)
            return
        self.failed = False
        self._put(0)
        if self._timer is None:
            self._timer = threading.Timer(self.give_up, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        self._timer = None
        if not self._healthy():
            self.failed = True
            self._put(1)  # ends the suspension; _after then fails the run

    def _after(self) -> Generator[Any, None, None]:
        if self.failed:
            raise self._failure()
        yield from ()

    def _healthy(self) -> bool:
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
    """

    def __init__(self, writer: CatalogWriter, give_up: float = 600.0) -> None:
        super().__init__(
            "spool_ok",
            give_up,
            f"the spool in {writer.spool_dir} cannot be written (disk full?): "
            f"the scan waits up to {give_up:.0f} s for space, then the run fails",
        )
        self.writer = writer
        writer.on_health(self._health)

    def _healthy(self) -> bool:
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
        Where the detector writes its frame files (created if missing).
    frame_bytes : int
        Bytes of one frame as the detector writes it.
    frames_ahead : int
        The scan pauses while fewer frames than this fit (beside the
        :data:`~bluesky_ptycho.io.frames.SPACE_RESERVE` the writer keeps free);
        enough for the frames taken between two checks.
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
        if not 0.05 <= interval <= 60:
            raise ValueError(f"FramesDiskGuard(interval={interval}): give seconds in [0.05, 60]")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.need = frames_ahead * frame_bytes + SPACE_RESERVE
        super().__init__(
            "frames_disk_ok",
            give_up,
            f"the frames' disk ({self.folder}) has room for fewer than {frames_ahead} frames: "
            f"the scan waits up to {give_up:.0f} s for space, then the run fails",
        )
        self.interval = interval
        self._ok = True
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._loop, name="frames-disk-guard", daemon=True)
        self._watch.start()

    def free(self) -> int:
        """Bytes free for this user on the frames' disk."""
        st = os.statvfs(self.folder)
        return st.f_bavail * st.f_frsize

    def _healthy(self) -> bool:
        return self.free() >= self.need

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            ok = self._healthy()
            if ok != self._ok:
                self._ok = ok
                self._health(ok)

    def close(self) -> None:
        """Stop watching (the suspender stays installed)."""
        self._stop.set()
        self._watch.join(5)

    def _failure(self) -> RuntimeError:
        return FramesDiskFull(
            f"the frames' disk ({self.folder}) stayed full for {self.give_up:.0f} s "
            f"({self.free() / 2**20:.0f} MiB free, {self.need / 2**20:.0f} MiB needed); "
            "the run is stopped. The frames taken so far are kept; free space there and "
            "take the scan again"
        )
