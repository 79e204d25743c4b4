"""The strict document codec: what a peer or a file may send, and what is refused."""

from __future__ import annotations

import io
import pickle
import random

import msgpack
import numpy as np
import pytest

from bluesky_ptycho.io import codec


class Marker:
    """Unpickling this creates a file: proof that code from a message ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def object_array_payload(marker) -> dict:
    """What msgpack-numpy decodes into an object array, i.e. what it unpickles."""
    return {
        b"nd": True,
        b"type": "|O",
        b"kind": b"O",
        b"shape": [1],
        b"data": pickle.dumps(Marker(marker)),
    }


def header(doc, name="start", run="r"):
    return msgpack.packb({"v": 1, "name": name, "run": run, "doc": doc})


def test_round_trip_keeps_arrays_and_plain_values():
    frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
    doc = {"uid": "u", "data": {"img": frame, "x": 1.5, "ok": True, "tags": ["a", None]}}
    name, out, run = codec.decode(codec.encode("event", doc, run="r"))
    assert (name, run) == ("event", "r")
    assert np.array_equal(out["data"]["img"], frame) and out["data"]["img"].dtype == np.uint16
    assert out["data"]["tags"] == ["a", None] and out["data"]["ok"] is True


def test_the_object_array_payload_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    doc = {"uid": "s", "time": 0.0, "ptycho": {"energy_ev": object_array_payload(marker)}}
    with pytest.raises(codec.BadMessage, match="map key is bytes"):
        codec.decode([header(doc)])
    # as msgpack ext types, or as bytes values under string keys: refused too
    ext = msgpack.packb(
        {"v": 1, "name": "start", "run": "r", "doc": {"x": msgpack.ExtType(1, b"x")}}
    )
    with pytest.raises(codec.BadMessage):
        codec.decode([ext])
    with pytest.raises(codec.BadMessage, match="type bytes"):
        codec.decode([header({"uid": "s", "blob": pickle.dumps(Marker(marker))})])
    assert not marker.exists()


@pytest.mark.parametrize(
    "dtype", ["|O", "<M8[s]", "|S10", "<U4", "|V8", "[('a', '<i4')]", "object"]
)
def test_only_number_dtypes_are_taken(dtype):
    ref = {"__nd__": 0, "dtype": dtype, "shape": [1]}
    with pytest.raises(codec.BadMessage, match="dtype"):
        codec.decode([header({"uid": "e", "x": ref}, "event"), b"\0" * 8])


@pytest.mark.parametrize(
    ("ref", "buffer", "why"),
    [
        ({"__nd__": 0, "dtype": "<u2", "shape": [4, 4]}, b"12345", "buffer of 5 bytes"),
        ({"__nd__": 0, "dtype": "<f8", "shape": [2**40, 2**30]}, b"\0" * 8, "buffer of 8 bytes"),
        ({"__nd__": 0, "dtype": "<u2", "shape": [-1]}, b"", "shape"),
        ({"__nd__": 0, "dtype": "<u2", "shape": [1] * 9}, b"\0\0", "shape"),
        ({"__nd__": 0, "dtype": "<u2", "shape": [1.5]}, b"\0\0", "shape"),
        ({"__nd__": 1, "dtype": "<u2", "shape": [1]}, b"\0\0", "names no unused buffer"),
        ({"__nd__": True, "dtype": "<u2", "shape": [1]}, b"\0\0", "names no unused buffer"),
        ({"__nd__": 0, "dtype": "<u2", "shape": [1], "x": 1}, b"\0\0", "array reference has keys"),
    ],
)
def test_arrays_are_checked_against_their_buffers_before_anything_is_made(ref, buffer, why):
    with pytest.raises(codec.BadMessage, match=why):
        codec.decode([header({"uid": "e", "x": ref}, "event"), buffer])


def test_nesting_depth_keys_names_and_sizes_are_bounded():
    deep: dict = {"uid": "s"}
    for _ in range(200):
        deep = {"a": deep}
    with pytest.raises(codec.BadMessage, match="nested deeper"):
        codec.decode([header(deep)])
    with pytest.raises(codec.BadMessage):
        codec.decode([msgpack.packb({"v": 1, "name": "start", "run": "r", "doc": {1: 2}})])
    with pytest.raises(codec.BadMessage, match="document name"):
        codec.decode([header({"uid": "s"}, name="exec")])
    with pytest.raises(codec.BadMessage, match="oversized"):
        codec.decode([header({"uid": "s"}), b"\0" * 100], max_bytes=64)
    with pytest.raises(codec.BadMessage, match="buffers sent"):
        codec.decode([header({"uid": "s"}), b"\0" * 8])


def test_random_damage_is_refused_as_bad_message_and_never_as_anything_else():
    """5,000 damaged messages (bits flipped, bytes cut or added, frames shuffled): each is
    decoded into plain data or refused with BadMessage; nothing else escapes."""
    rng = random.Random(0)
    frame = np.arange(64, dtype=np.float32).reshape(8, 8)
    good = codec.encode("event", {"uid": "e", "descriptor": "d", "seq_num": 1,
                                  "data": {"img": frame, "x": 1.0}, "timestamps": {}}, run="r")  # fmt: skip
    good = [bytes(p) for p in good]
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(5000):
        parts = [bytearray(p) for p in good]
        for _ in range(rng.randint(1, 4)):
            part = parts[rng.randrange(len(parts))]
            what = rng.random()
            if what < 0.5 and part:
                part[rng.randrange(len(part))] ^= 1 << rng.randrange(8)
            elif what < 0.7 and part:
                del part[rng.randrange(len(part)) :]
            elif what < 0.9:
                part[rng.randrange(len(part) + 1) : 0] = bytes(rng.randrange(256) for _ in range(3))
            else:
                rng.shuffle(parts)
        try:
            codec.decode([bytes(p) for p in parts])
            outcomes["decoded"] += 1
        except codec.BadMessage:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 1000 and sum(outcomes.values()) == 5000


def test_control_values_are_held_to_the_same_rules(tmp_path):
    assert codec.unpack_value(codec.pack({"command": "status", "n": [1, 2.5]})) == {
        "command": "status", "n": [1, 2.5],
    }  # fmt: skip
    marker = tmp_path / "ran"
    with pytest.raises(codec.BadMessage):
        codec.unpack_value(
            msgpack.packb({"command": "set", "params": object_array_payload(marker)})
        )
    with pytest.raises(codec.BadMessage, match="oversized"):
        codec.unpack_value(b"\x91" + b"\xc0" * 2000, max_bytes=1000)
    assert not marker.exists()


def test_records_in_a_file_stop_at_a_torn_or_corrupt_one():
    docs = [codec.encode("start", {"uid": f"s{i}", "time": 0.0}) for i in range(3)]
    blob = b"".join(bytes(b) for d in docs for b in codec.record(d))
    for cut in (len(blob) - 1, len(blob) - 20):  # the last record torn by a crash
        f = io.BytesIO(blob[:cut])
        assert len(list(codec.read_records(f))) == 2
    damaged = bytearray(blob)
    damaged[len(blob) // 2] ^= 0xFF  # the middle record's bytes changed: its checksum fails
    f = io.BytesIO(bytes(damaged))
    assert len(list(codec.read_records(f))) == 1
