"""The RunEngine's side of the remote back-end: ``RE.subscribe(Publisher())``.

The callback only puts the document on a queue and returns; a thread of its
own sends each document as one message (:mod:`bluesky_ptycho.io.codec`) over a ZeroMQ PUSH
socket to ``bluesky-ptycho serve``. PUSH holds messages while the back-end
is away or busy (up to ``hwm`` in ZeroMQ, the rest on the queue, which holds
documents only), so the scan never waits for the back-end and nothing is
dropped.

Frames travel one of two ways (``frames=``):

- ``"file"`` (the default, measured faster — docs/benchmarks.md): the
  documents go as they are and the back-end reads the frames from the
  detector's HDF5 files named by the StreamResource documents; the two
  machines must see the same storage.
- ``"inline"``: the sending thread reads each frame as its StreamDatum
  passes and sends it as a raw buffer inside its event (no pickling, no
  copy); the image's StreamResource/StreamDatum documents are not sent. For
  a back-end that cannot see the detector's files. A frame is read only
  when its turn to be sent comes, so a slow back-end costs the beamline
  documents on the queue, not frames in memory.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import zmq
from event_model import unpack_event_page
from event_model.documents import EventPage, StreamDatum, StreamResource

from bluesky_ptycho.io.codec import encode
from bluesky_ptycho.io.frames import StreamFrameReader
from bluesky_ptycho.threads import Worker
from bluesky_ptycho.transport import DEFAULT_DATA_PORT, DEFAULT_HOST, address
from bluesky_ptycho.transport.security import apply, client_keys

log = logging.getLogger(__name__)
FRAME_MODES = ("file", "inline")


class Publisher:
    """Send every document of the RunEngine to a back-end.

    Parameters
    ----------
    address : str
        The back-end's document address (``serve`` prints it);
        ``tcp://127.0.0.1:5577`` by default.
    frames : {"file", "inline"}
        How detector frames reach the back-end (see the module docstring).
    keys : path-like, optional
        Folder with ``client.key_secret`` and ``server.key`` (``bluesky-ptycho
        keys``), for a back-end that listens beyond localhost.
    hwm : int
        Messages ZeroMQ holds for the back-end before the sender waits.
    """

    def __init__(
        self,
        address: str = address(DEFAULT_HOST, DEFAULT_DATA_PORT),
        frames: str = "file",
        keys: Any = None,
        hwm: int = 64,
    ) -> None:
        if frames not in FRAME_MODES:
            raise ValueError(f"Publisher(frames={frames!r}): choose one of {FRAME_MODES}")
        if not address.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"Publisher(address={address!r}): give tcp://HOST:PORT")
        self.address = address
        self.frames = frames
        self._context: zmq.Context = zmq.Context.instance()
        self._sock = self._context.socket(zmq.PUSH)
        self._sock.sndhwm = hwm
        apply(self._sock, client_keys(keys))
        self._sock.connect(address)
        self.sent = 0
        self.errors: list[str] = []
        self._runs: dict[str, str] = {}  # descriptor or resource uid → run uid
        self._image_keys: dict[str, str] = {}  # run uid → the detector image's data key
        self._images: dict[str, str] = {}  # image StreamResource uid → run uid
        self._reader = StreamFrameReader()
        self._pending: dict[tuple[str, int], Any] = {}  # (descriptor, seq_num) → frame
        # a document that cannot be sent is logged and kept in `errors`; the others go on
        self._worker = Worker(
            "publisher",
            self._send,
            log=log,
            on_error=lambda err: self.errors.append(f"{type(err).__name__}: {err}"),
        )

    def __call__(self, name: str, doc: dict) -> None:
        self._worker.put((name, doc))

    @property
    def queued(self) -> int:
        """Documents waiting to be sent."""
        return self._worker.pending

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every document so far has been handed to ZeroMQ; True if in time."""
        return self._worker.wait_idle(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (waiting up to *timeout* s for the back-end), then close."""
        self._worker.close()
        self._worker.join(timeout)
        self._sock.close(linger=int(timeout * 1000))

    # -- the sending thread ---------------------------------------------------------
    def _send(self, item: tuple[str, dict]) -> None:
        name, doc = item
        for n, d in self._outgoing(name, doc):
            self._sock.send_multipart(encode(n, d, self._run_of(n, d)), copy=False)
            self.sent += 1

    def _run_of(self, name: str, doc: dict) -> str | None:
        if name == "start":
            return doc["uid"]
        if name in ("event", "event_page", "stream_datum"):
            return self._runs.get(doc["descriptor"])
        return doc.get("run_start")

    def _outgoing(self, name: str, doc: dict) -> list[tuple[str, dict]]:
        if name == "start":
            self._image_keys[doc["uid"]] = (doc.get("ptycho") or {}).get("image_key", "fccd_image")
        elif name == "descriptor":
            self._runs[doc["uid"]] = doc["run_start"]
        elif name == "stop":
            self._forget(doc["run_start"])
        if self.frames == "file":
            return [(name, doc)]
        # inline: frames ride in their events
        if name == "stream_resource" and doc.get("data_key") == self._image_keys.get(
            doc.get("run_start", "")
        ):
            self._reader.stream_resource(cast(StreamResource, doc))
            self._images[doc["uid"]] = doc["run_start"]
            return []
        if name == "stream_datum" and doc["stream_resource"] in self._images:
            frames = self._reader.frames(cast(StreamDatum, doc))
            first = doc["seq_nums"]["start"]
            for k, frame in enumerate(frames):
                self._pending[(doc["descriptor"], first + k)] = frame
            return []
        if name == "event_page":
            events = unpack_event_page(cast(EventPage, doc))
            return [e for ev in events for e in self._outgoing("event", ev)]
        if name == "event":
            frame = self._pending.pop((doc["descriptor"], doc["seq_num"]), None)
            if frame is not None:
                key = self._image_keys.get(self._runs.get(doc["descriptor"], ""), "fccd_image")
                doc = {
                    **doc,
                    "data": {**doc["data"], key: frame},
                    "timestamps": {**doc["timestamps"], key: doc["time"]},
                }
        return [(name, doc)]

    def _forget(self, run: str) -> None:
        for uid in [u for u, r in self._images.items() if r == run]:
            del self._images[uid]
        descriptors = {u for u, r in self._runs.items() if r == run}
        self._pending = {k: v for k, v in self._pending.items() if k[0] not in descriptors}
        for uid in descriptors:
            del self._runs[uid]
        self._image_keys.pop(run, None)
