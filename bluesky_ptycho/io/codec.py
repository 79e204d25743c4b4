"""Documents as bytes and back — the one strict decoder for everything that crosses a trust boundary.

What arrives from a socket (documents, control requests, published
snapshots) or from a file another process wrote (a spool) is decoded here
and nowhere else. Nothing is unpickled or evaluated: a message can carry
data, never code.

A document is ``[header, buffer_1, …, buffer_n]``. The header is msgpack:
``{"v": 1, "name": <document name>, "run": <run uid>, "doc": <document>}``
where every NumPy array of the document is replaced by ``{"__nd__": i,
"dtype": "<u2", "shape": [...]}`` and travels as buffer *i*: its bytes as
they are in memory (sent and received without copies, ``np.frombuffer``).

:func:`decode` accepts only what a Bluesky document can hold:

- maps with **string keys**; strings, numbers, booleans, None, lists;
  no bytes, no msgpack extension types (so no ``msgpack_numpy`` object
  arrays and no pickles);
- arrays of **numeric dtypes from an allow-list** (booleans, integers,
  floats, complex; either byte order), at most :data:`MAX_NDIM` dimensions,
  whose size is checked against the buffer **before** anything is allocated;
- at most :data:`MAX_DEPTH` levels of nesting, and a bounded total size.

Anything else raises :class:`BadMessage` with the reason; receivers count it
and go on. :func:`pack` / :func:`unpack_value` do the same for plain values
(control requests and replies), and :func:`record` /
:func:`read_records` put messages in a file (the spool) with a checksum per
record, so a record torn by a crash is recognised and the ones before it are
kept.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

import msgpack
import numpy as np

VERSION = 1
DOC_NAMES = frozenset({
    "start", "descriptor", "event", "event_page", "stop", "resource", "datum", "datum_page",
    "stream_resource", "stream_datum",
})  # fmt: skip
#: Largest message accepted by default: 64 MiB (14 full FCCD frames).
MAX_MESSAGE_BYTES = 64 * 2**20
#: Deepest nesting of maps and lists in a document.
MAX_DEPTH = 32
#: Most dimensions of an array.
MAX_NDIM = 8
#: Most entries in one map or list, and the longest string.
MAX_ITEMS = 1_000_000
MAX_STR = 16 * 2**20
#: The array dtypes a document may carry (numbers only: no objects, strings, records, times).
DTYPES = frozenset(
    np.dtype(t).newbyteorder(order).str
    for t in ("b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16")
    for order in ("<", ">")
)
_ARRAY_KEYS = frozenset({"__nd__", "dtype", "shape"})


class BadMessage(ValueError):
    """Something that is not a document (or value) we take; ``reason`` says which way:
    ``"malformed"`` or ``"oversized"``."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason} message: {detail}")


# ------------------------------------------------------------------------------ encoding
def _plain(obj: Any) -> Any:
    """msgpack's fallback for NumPy scalars and small containers."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    raise TypeError(f"cannot put a {type(obj).__name__} in a document: {obj!r:.80}")


def encode(name: str, doc: Mapping[str, Any], run: str | None = None) -> list[Any]:
    """The parts of one document: a header and one buffer per array (no copies)."""
    buffers: list[Any] = []

    def strip(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            a = value if value.flags.c_contiguous else np.ascontiguousarray(value)
            if a.dtype.str not in DTYPES:
                raise TypeError(f"cannot put an array of dtype {a.dtype} in a document")
            # a.data is memoryview(a) (NumPy's stubs give ndarray a buffer only from 3.12 on)
            buffers.append(a.data.cast("B") if a.size else b"")
            return {"__nd__": len(buffers) - 1, "dtype": a.dtype.str, "shape": list(a.shape)}
        if isinstance(value, dict):
            for k in value:
                if not isinstance(k, str):
                    raise TypeError(
                        f"a document's map key is {type(k).__name__} {k!r:.40}, not a string"
                    )
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [strip(v) for v in value]
        if isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(
                "bytes cannot go in a document (documents hold JSON-like values and arrays)"
            )
        return value

    header = msgpack.packb(
        {"v": VERSION, "name": name, "run": run, "doc": strip(doc)}, default=_plain
    )
    return [header, *buffers]


def pack(value: Any) -> bytes:
    """A plain value (a control request or reply) as msgpack; arrays become lists."""

    def plain(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        return _plain(obj)

    return msgpack.packb(value, default=plain)


# ------------------------------------------------------------------------------ decoding
def _unpack(data: Any) -> Any:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_STR,
            max_bin_len=MAX_STR,
            max_array_len=MAX_ITEMS,
            max_map_len=MAX_ITEMS,
            max_ext_len=0,  # no extension types at all
        )
    except Exception as err:  # any decoding failure is the sender's fault
        raise BadMessage("malformed", f"not msgpack ({type(err).__name__}: {err!s:.80})") from None


def unpack_value(data: Any, max_bytes: int = 2**20) -> Any:
    """A plain value from msgpack, held to the rules of :func:`decode` (no arrays)."""
    size = memoryview(data).nbytes
    if size > max_bytes:
        raise BadMessage("oversized", f"{size} bytes, the limit is {max_bytes}")
    value = _unpack(data)
    _check_plain(value, 0, None)
    return value


def decode(parts: list[Any], max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[str, dict, str | None]:
    """``(name, doc, run uid)`` of a received message; arrays are views of the received buffers.

    *parts* are ``bytes``, memoryviews or ``zmq.Frame`` objects. Raises :class:`BadMessage`.
    """
    views = [p.buffer if hasattr(p, "buffer") else memoryview(p) for p in parts]
    total = sum(v.nbytes for v in views)
    if total > max_bytes:
        raise BadMessage(
            "oversized", f"{total} bytes, the limit is {max_bytes} (serve --max-message-mb)"
        )
    if not views:
        raise BadMessage("malformed", "an empty message")
    header = _unpack(views[0])
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise BadMessage("malformed", f"the header is not a version-{VERSION} document header")
    if set(header) != {"v", "name", "run", "doc"}:
        raise BadMessage("malformed", f"the header has keys {sorted(map(str, header))}")
    name, doc, run = header["name"], header["doc"], header["run"]
    if name not in DOC_NAMES:
        raise BadMessage(
            "malformed", f"document name {name!r:.40} is not one of {sorted(DOC_NAMES)}"
        )
    if not isinstance(doc, dict):
        raise BadMessage("malformed", "the document is not a map")
    if run is not None and not isinstance(run, str):
        raise BadMessage("malformed", "the run uid is not a string")
    used: set[int] = set()
    doc = _check_plain(doc, 0, (views, used))
    if len(used) != len(views) - 1:
        raise BadMessage("malformed", f"{len(views) - 1} buffers sent, {len(used)} referenced")
    return name, doc, run


def _check_plain(value: Any, depth: int, arrays: tuple[list[memoryview], set[int]] | None) -> Any:
    """*value* checked (and array references turned into arrays when *arrays* is given)."""
    if depth > MAX_DEPTH:
        raise BadMessage("malformed", f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        if arrays is not None and "__nd__" in value:
            return _array(value, *arrays)
        for k in value:
            if not isinstance(k, str):
                raise BadMessage(
                    "malformed", f"a map key is {type(k).__name__} {k!r:.40}, not a string"
                )
        return {k: _check_plain(v, depth + 1, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_check_plain(v, depth + 1, arrays) for v in value]
    raise BadMessage("malformed", f"a value of type {type(value).__name__} is not allowed")


def _array(ref: dict, views: list[memoryview], used: set[int]) -> np.ndarray:
    if set(ref) != _ARRAY_KEYS:
        raise BadMessage("malformed", f"an array reference has keys {sorted(map(str, ref))}")
    i, dtype, shape = ref["__nd__"], ref["dtype"], ref["shape"]
    if not (type(i) is int and 0 <= i < len(views) - 1) or i in used:
        raise BadMessage("malformed", f"array reference {i!r:.20} names no unused buffer")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise BadMessage("malformed", f"dtype {dtype!r:.40} is not a number type we take")
    if not (
        isinstance(shape, list)
        and len(shape) <= MAX_NDIM
        and all(type(s) is int and s >= 0 for s in shape)
    ):
        raise BadMessage(
            "malformed", f"shape {shape!r:.60} is not a list of at most {MAX_NDIM} sizes"
        )
    dt = np.dtype(dtype)
    size = dt.itemsize
    for s in shape:  # Python integers: no overflow
        size *= s
    buf = views[i + 1]
    if size != buf.nbytes:
        raise BadMessage("malformed", f"buffer of {buf.nbytes} bytes for an array {dt} {shape}")
    used.add(i)
    return np.frombuffer(buf, dtype=dt).reshape(shape)


# ------------------------------------------------------------------------------ in a file
_MAGIC = b"BPS1"
_HEAD = struct.Struct("<4sI")  # magic, number of parts
_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def record(parts: list[Any]) -> list[Any]:
    """One record of a file of messages, as buffers for ``os.writev`` (no copies): magic,
    part count, part lengths, the parts, and a CRC-32 of all that."""
    views = [p if isinstance(p, bytes) else memoryview(p).cast("B") for p in parts]
    head = _HEAD.pack(_MAGIC, len(views)) + b"".join(_LEN.pack(len(v)) for v in views)
    crc = zlib.crc32(head)
    for v in views:
        crc = zlib.crc32(v, crc)
    return [head, *views, _CRC.pack(crc)]


def read_records(f: BinaryIO, max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[list[bytes]]:
    """The records of a file written with :func:`record`, in order.

    Stops at the end, or at the first record that is torn (a crash while it
    was written) or corrupt; the caller learns where from ``f.tell()`` versus
    the file's size. Part sizes are checked against *max_bytes* before reading.
    """
    while True:
        start = f.tell()
        head = f.read(_HEAD.size)
        if len(head) < _HEAD.size:
            f.seek(start)
            return
        magic, n = _HEAD.unpack(head)
        if magic != _MAGIC or n > 4096:
            f.seek(start)
            return
        lens_raw = f.read(_LEN.size * n)
        if len(lens_raw) < _LEN.size * n:
            f.seek(start)
            return
        lens = [_LEN.unpack_from(lens_raw, k * _LEN.size)[0] for k in range(n)]
        if sum(lens) > max_bytes:
            f.seek(start)
            return
        parts = [f.read(size) for size in lens]
        tail = f.read(_CRC.size)
        if (
            any(len(p) != size for p, size in zip(parts, lens, strict=True))
            or len(tail) < _CRC.size
        ):
            f.seek(start)
            return
        crc = zlib.crc32(head + lens_raw)
        for p in parts:
            crc = zlib.crc32(p, crc)
        if _CRC.unpack(tail)[0] != crc:
            f.seek(start)
            return
        yield parts
