"""The one idiom for a thread fed by a queue: :class:`Worker`.

Stages, the streaming reconstruction, the catalog writer, the publishers and
the simulated detector each hand work to a thread of their own so that the
caller (often the RunEngine) returns at once. They all do it through this
class: items are handled one at a time, in the order they were put; an
error in one is logged and counted, never ends the thread; between items
the owner may do work of its own (:attr:`Worker.idle`, called whenever no
item came within the poll interval); :meth:`Worker.close` ends the thread
after what is queued.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

_STOP = object()
_CALL = object()
_EMPTY = object()


class Worker:
    """A thread that handles what is put on its queue.

    Parameters
    ----------
    name : str
        The thread's name (it shows in logs and debuggers).
    handle : callable(item)
        Called on the worker's thread for each item, in order.
    idle : callable(), optional
        Called on the worker's thread when no item came within the poll
        interval: the owner's own work between items (an iteration, a retry).
    poll : float or callable() → float or None
        Seconds to wait for an item before calling *idle*; 0 when the owner
        has work of its own, None to wait for an item without limit. A
        callable is asked before every wait (the owner's state decides).
    maxsize : int
        Items held at most (0: no limit). When full, :meth:`put` drops the
        oldest item (for outputs where the newest matters, e.g. what goes
        to a viewer) and counts it in :attr:`dropped`.
    log : logging.Logger, optional
        Where errors in *handle* and *idle* are reported.
    on_error : callable(exception), optional
        Also told of each error (a stage keeps them for its status).
    """

    def __init__(
        self,
        name: str,
        handle: Callable[[Any], Any],
        *,
        idle: Callable[[], Any] | None = None,
        poll: float | Callable[[], float | None] | None = None,
        maxsize: int = 0,
        log: logging.Logger | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
    ) -> None:
        self.name = name
        self.handle = handle
        self.idle = idle
        self._poll = poll
        self.log = log or logging.getLogger(f"bluesky_ptycho.threads.{name}")
        self.on_error = on_error
        self.maxsize = maxsize
        self.dropped = 0
        self.errors = 0
        self.heartbeat = time.time()
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._unfinished = 0
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- any thread ---------------------------------------------------------------------
    def put(self, item: Any) -> None:
        """Queue *item* for :attr:`handle` and return at once."""
        with self._cond:
            if self.maxsize and len(self._items) >= self.maxsize:
                self._items.popleft()
                self._unfinished -= 1
                self.dropped += 1
            self._items.append(item)
            self._unfinished += 1
            self._cond.notify()

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run *fn()* on the worker's thread, in turn with the items."""
        self.put((_CALL, fn))

    def wake(self) -> None:
        """Stop waiting for an item now (the owner has work for :attr:`idle`)."""
        with self._cond:
            self._cond.notify()

    def drain(self) -> list[Any]:
        """Take every queued item off the queue (unhandled) and return them."""
        with self._cond:
            items = [i for i in self._items if not (isinstance(i, tuple) and i and i[0] is _CALL)]
            self._unfinished -= len(self._items)
            self._items.clear()
            self._cond.notify_all()
        return items

    def close(self) -> None:
        """End the thread once the items queued so far are handled."""
        self.put(_STOP)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True if it did in time."""
        return self.done.wait(timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every item put so far is handled; True if that happened in time."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._unfinished > 0 and not self.done.is_set():
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.1 if left is None else min(left, 0.1))
        return True

    @property
    def pending(self) -> int:
        """Items queued and not yet handled."""
        return len(self._items)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def on_own_thread(self) -> bool:
        """True when called from the worker's thread."""
        return threading.current_thread() is self._thread

    # -- the worker's thread --------------------------------------------------------------
    def _timeout(self) -> float | None:
        return self._poll() if callable(self._poll) else self._poll

    def _run(self) -> None:
        name_native_thread(self.name)
        try:
            while True:
                self.heartbeat = time.time()
                with self._cond:
                    if not self._items:
                        timeout = self._timeout()
                        if timeout is None or timeout > 0:
                            self._cond.wait(timeout)
                    item = self._items.popleft() if self._items else _EMPTY
                if item is _EMPTY:
                    if self.idle is not None:
                        self._guarded(self.idle)
                    continue
                try:
                    if item is _STOP:
                        return
                    if isinstance(item, tuple) and item and item[0] is _CALL:
                        self._guarded(item[1])
                    else:
                        self._guarded(partial(self.handle, item))
                finally:
                    with self._cond:
                        self._unfinished -= 1
                        self._cond.notify_all()
        finally:
            self.done.set()
            with self._cond:
                self._cond.notify_all()

    def _guarded(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as err:
            self.errors += 1
            self.log.exception("%s: an error; the thread goes on", self.name)
            if self.on_error is not None:
                try:
                    self.on_error(err)
                except Exception:
                    self.log.exception("%s: the error hook failed", self.name)


def name_native_thread(name: str) -> None:
    """Give the calling thread *name* (its first 15 characters) where the system shows
    threads (``top -H``, ``/proc/PID/task/TID/comm``): where a process's CPU time goes can
    then be told thread by thread. Does nothing where the system has no such name."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode("utf-8", "replace")[:15] + b"\0", 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


# -- which run a thread works for (so each run's log file gets that run's messages only) ----
_local = threading.local()


def bind_run(uid: str | None) -> None:
    """Say that the calling thread works for run *uid* (None: for no run in particular)."""
    _local.run = uid


def current_run() -> str | None:
    """The run the calling thread works for (see :func:`bind_run`), or None."""
    return getattr(_local, "run", None)
