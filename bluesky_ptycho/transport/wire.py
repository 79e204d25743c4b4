"""One document as one ZeroMQ multipart message, and back.

A message is ``[header, buffer_1, …, buffer_n]``. The header is msgpack:
``{"v": 1, "name": <document name>, "run": <run uid>, "doc": <document>}``
(the run's uid rides along so a back-end that restarted mid-run knows which
run an event belongs to) where every NumPy
array of the document is replaced by ``{"__nd__": i, "dtype": "<u2",
"shape": [...]}`` and travels as buffer *i* — its bytes as they are in
memory, sent without a copy and received without a copy
(``np.frombuffer`` over the ZeroMQ frame). Nothing is pickled: a message
can carry data, never code.

:func:`decode` checks everything a peer could get wrong or fake (the
header's type and version, the document name, the number of buffers, each
buffer's dtype, shape and length, the total size) and raises
:class:`BadMessage` with the reason; the receiver counts it and goes on.

bluesky's own 0MQ ``Publisher``/``RemoteDispatcher`` send ``prefix name
pickle(doc)`` over PUB/SUB; we keep one message per document and the
document names, but not pickle (unsafe from the network, and it copies
arrays) nor PUB/SUB (a subscriber that joins late or falls behind loses
documents silently; PUSH/PULL holds them instead).
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

VERSION = 1
DOC_NAMES = frozenset(
    {
        "start",
        "descriptor",
        "event",
        "event_page",
        "stop",
        "resource",
        "datum",
        "datum_page",
        "stream_resource",
        "stream_datum",
    }
)
#: Largest message accepted by default: 64 MiB (14 full FCCD frames).
MAX_MESSAGE_BYTES = 64 * 2**20
_KINDS = "biufc"  # numbers only: no object arrays, no strings of unbounded size


class BadMessage(ValueError):
    """A message that is not a document we can take; ``reason`` is ``"malformed"`` or ``"oversized"``."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason} message: {detail}")


def _plain(obj: Any) -> Any:
    """msgpack's fallback for NumPy scalars and small things."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} in a document: {obj!r:.80}")


def encode(name: str, doc: dict, run: str | None = None) -> list[Any]:
    """The message frames of one document: a header and one buffer per array (no copies)."""
    buffers: list[Any] = []

    def strip(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            a = value if value.flags.c_contiguous else np.ascontiguousarray(value)
            buffers.append(memoryview(a).cast("B") if a.size else b"")
            return {"__nd__": len(buffers) - 1, "dtype": a.dtype.str, "shape": list(a.shape)}
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [strip(v) for v in value]
        return value

    header = msgpack.packb(
        {"v": VERSION, "name": name, "run": run, "doc": strip(doc)}, default=_plain
    )
    return [header, *buffers]


def decode(parts: list[Any], max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[str, dict, str | None]:
    """``(name, doc, run uid)`` of a received message; arrays are views of the received buffers.

    *parts* are ``bytes`` or ``zmq.Frame`` objects. Raises :class:`BadMessage`.
    """
    views = [p.buffer if hasattr(p, "buffer") else memoryview(p) for p in parts]
    total = sum(v.nbytes for v in views)
    if total > max_bytes:
        raise BadMessage(
            "oversized", f"{total} bytes, the limit is {max_bytes} (serve --max-message-mb)"
        )
    if not views:
        raise BadMessage("malformed", "an empty message")
    try:
        header = msgpack.unpackb(views[0], raw=False, strict_map_key=True)
    except Exception as err:  # any decoding failure is the sender's fault
        raise BadMessage("malformed", f"the header is not msgpack ({type(err).__name__})") from None
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise BadMessage("malformed", f"the header is not a version-{VERSION} document header")
    name, doc, run = header.get("name"), header.get("doc"), header.get("run")
    if name not in DOC_NAMES or not isinstance(doc, dict):
        raise BadMessage(
            "malformed",
            f"document name {name!r:.40} is not one of {sorted(DOC_NAMES)}"
            if name not in DOC_NAMES
            else "the document is not a map",
        )
    if run is not None and not isinstance(run, str):
        raise BadMessage("malformed", "the run uid is not a string")
    used: set[int] = set()

    def restore(value: Any) -> Any:
        if isinstance(value, dict):
            if "__nd__" in value:
                return _array(value, views, used)
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return [restore(v) for v in value]
        return value

    doc = restore(doc)
    if len(used) != len(views) - 1:
        raise BadMessage("malformed", f"{len(views) - 1} buffers sent, {len(used)} referenced")
    return name, doc, run


def _array(ref: dict, views: list[memoryview], used: set[int]) -> np.ndarray:
    i, dtype, shape = ref.get("__nd__"), ref.get("dtype"), ref.get("shape")
    if not (isinstance(i, int) and 0 <= i < len(views) - 1) or i in used:
        raise BadMessage("malformed", f"array reference {i!r:.20} names no unused buffer")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise BadMessage("malformed", f"dtype {dtype!r:.40} is not a NumPy dtype") from None
    if dt.kind not in _KINDS or dt.hasobject:
        raise BadMessage("malformed", f"dtype {dt} is not numeric")
    if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
        raise BadMessage("malformed", f"shape {shape!r:.60} is not a list of sizes")
    buf = views[i + 1]
    if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != buf.nbytes:
        raise BadMessage("malformed", f"buffer of {buf.nbytes} bytes for an array {dt} {shape}")
    used.add(i)
    return np.frombuffer(buf, dtype=dt).reshape(shape)
