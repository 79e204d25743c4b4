"""Pause the RunEngine while the spool cannot be written; fail the run if it stays so.

A scan must not carry on unrecorded. :class:`SpoolGuard` watches a
:class:`~bluesky_ptycho.storage.writer.CatalogWriter`'s health through an
Ophyd signal and a bluesky ``SuspendBoolLow`` suspender: when the disk
refuses the spool the RunEngine suspends at its next step (the documents
already emitted are held in memory by the writer); when the disk takes them
again the scan resumes where it was. If it does not within ``give_up``
seconds, the suspension ends in an error (:class:`SpoolFull`) and the run
fails with a stop document that says why — the RunEngine's call raises, so
a script or the demo ends with a non-zero status::

    guard = SpoolGuard(catalog.writer)
    guard.install(RE)
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

from bluesky.suspenders import SuspendBoolLow
from ophyd import Signal

from bluesky_ptycho.storage.writer import CatalogWriter


class SpoolFull(RuntimeError):
    """The spool stayed unwritable longer than the guard waits."""


class SpoolGuard:
    """A suspender on the writer's spool health (see the module docstring).

    Parameters
    ----------
    writer : CatalogWriter
    give_up : float
        Seconds the scan waits for the disk before the run fails.
    """

    def __init__(self, writer: CatalogWriter, give_up: float = 600.0) -> None:
        if not 0 < give_up <= 86400:
            raise ValueError(f"SpoolGuard(give_up={give_up}): give seconds in (0, 86400]")
        self.writer = writer
        self.give_up = give_up
        self.ok = Signal(name="spool_ok", value=1)
        self.failed = False
        self.RE: Any = None
        self._timer: threading.Timer | None = None
        self.suspender = SuspendBoolLow(
            self.ok,
            sleep=0,
            post_plan=self._after,
            tripped_message=f"the spool in {writer.spool_dir} cannot be written (disk full?): "
            f"the scan waits up to {give_up:.0f} s for space, then the run fails",
        )
        writer.on_health(self._health)

    def install(self, RE: Any) -> None:
        """Install the suspender on RunEngine *RE*."""
        self.RE = RE
        RE.install_suspender(self.suspender)

    def _put(self, value: int) -> None:
        """Set the signal on the RunEngine's event loop: the suspender makes its asyncio
        event there (from another thread it may fail to, when the loop is busy)."""
        if self.RE is None:
            self.ok.put(value)
        else:
            self.RE.loop.call_soon_threadsafe(self.ok.put, value)

    def _health(self, healthy: bool) -> None:
        if healthy:
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
        if not self.writer.healthy:
            self.failed = True
            self._put(1)  # ends the suspension; _after then fails the run

    def _after(self) -> Generator[Any, None, None]:
        if self.failed:
            raise SpoolFull(
                f"the spool in {self.writer.spool_dir} stayed unwritable for {self.give_up:.0f} s "
                f"({self.writer.status().spool_error}); the run is stopped. Documents taken "
                "so far are held in memory and written when the disk takes them again"
            )
        yield from ()
