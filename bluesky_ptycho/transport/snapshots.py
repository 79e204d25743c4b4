"""The back-end's results for viewers: a PUB socket out, a SUB client in.

``bluesky-ptycho serve`` publishes every document its stages emit
(snapshots, iterations, cleaned frames, STXM, quality verdicts and beam
state) on ``--results`` (port 5579). A viewer, the quality feedback of a
suspender, or a rescan planner on another machine subscribe with
:class:`SnapshotSubscriber`, which calls its subscribers with ``(name,
doc)`` just as an in-process :class:`~bluesky_ptycho.pipeline.runner.Pipeline`
does, so the same callbacks serve both.

This is PUB/SUB on purpose (not the PUSH/PULL of the raw documents): what
goes out is for display and feedback, a subscriber may come and go at any
time, and a slow or stuck one must never hold the back-end up. The
publisher's queue drops its oldest messages when a subscriber lags
(:attr:`SnapshotPublisher.dropped`); a late subscriber starts with the next
event (callbacks here recognise events by their data keys, not by a
descriptor they may have missed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import zmq

from bluesky_ptycho.io.codec import MAX_MESSAGE_BYTES, BadMessage, decode, encode
from bluesky_ptycho.threads import Worker
from bluesky_ptycho.transport import DEFAULT_HOST, address
from bluesky_ptycho.transport.security import ServerKeys, apply, client_keys

log = logging.getLogger(__name__)
DEFAULT_SNAPSHOT_PORT = 5579


class SnapshotPublisher:
    """Publish documents on a PUB socket from its own thread; subscribe it to a pipeline.

    Parameters
    ----------
    context : zmq.Context
    address : str
        ``tcp://host:port`` to bind.
    keys : ServerKeys, optional
        CURVE server keys (the context's authenticator admits the clients).
    queue : int
        Documents held for sending; beyond, the oldest are dropped.
    """

    def __init__(
        self, context: zmq.Context, address: str, keys: ServerKeys | None = None, queue: int = 256
    ) -> None:
        self.address = address
        self.sent = 0
        self._sock = context.socket(zmq.PUB)
        if keys is not None:
            keys.apply(self._sock)
        self._sock.linger = 0
        self._sock.sndhwm = 64
        self._sock.bind(address)
        # the newest matters: when the queue is full the oldest document makes room
        self._worker = Worker("snapshot-publisher", self._send, maxsize=queue, log=log)
        self._unsent = 0  # no room at the socket (a lagging subscriber): dropped there

    @property
    def dropped(self) -> int:
        """Documents dropped because a subscriber lagged (queue full, or the socket full)."""
        return self._worker.dropped + self._unsent

    def __call__(self, name: str, doc: dict) -> None:
        self._worker.put((name, doc))

    def _send(self, item: tuple[str, dict]) -> None:
        name, doc = item
        try:
            self._sock.send_multipart(encode(name, doc), copy=False, flags=zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self._unsent += 1

    def close(self) -> None:
        self._worker.drain()
        self._worker.close()
        self._worker.join(5)
        self._sock.close(0)


class SnapshotSubscriber:
    """Receive a back-end's published documents and pass them to subscribers.

    ``sub = SnapshotSubscriber("tcp://beamline-gpu:5579"); sub.subscribe(viewer_model)``.
    Subscribers run on the receiving thread (a GUI hands them to its own thread).

    Parameters
    ----------
    address : str
        ``tcp://host:port`` of ``serve --results``; localhost's 5579 by default.
    keys : path-like, optional
        The folder ``bluesky-ptycho keys`` made, for a back-end with CURVE keys.
    """

    def __init__(
        self, address: str = address(DEFAULT_HOST, DEFAULT_SNAPSHOT_PORT), keys: Any = None
    ) -> None:
        self.address = address
        self.received = 0
        self.malformed = 0
        self._subscribers: list[Callable[[str, dict], Any]] = []
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._sock = self._context.socket(zmq.SUB)
        apply(self._sock, client_keys(keys))
        self._sock.linger = 0
        self._sock.maxmsgsize = 4 * MAX_MESSAGE_BYTES
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(address)
        self._thread = threading.Thread(
            target=self._receive, name="snapshot-subscriber", daemon=True
        )
        self._thread.start()

    def subscribe(self, callback: Callable[[str, dict], Any]) -> None:
        """Call *callback(name, doc)* for every document received from now on."""
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[str, dict], Any]) -> None:
        if callback in self._subscribers:
            self._subscribers.remove(callback)

    def _receive(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(200):
                continue
            parts = self._sock.recv_multipart(copy=False)
            try:
                name, doc, _run = decode(parts)
            except BadMessage:
                self.malformed += 1
                continue
            self.received += 1
            for cb in list(self._subscribers):
                try:
                    cb(name, doc)
                except Exception:  # a failing viewer never stops the others
                    log.exception("snapshot subscriber %r failed on a %s document", cb, name)
        self._sock.close(0)
        self._context.term()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
