"""The back-end as an attacker and a flood would try it: no message stops it, none makes it
wait, nothing it receives runs code, and what a flood opens is closed again."""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from backends import Backend, beamline
from tiled_serve import free_port

from bluesky_ptycho.acquisition.plans import ptycho_scan
from bluesky_ptycho.io import codec
from bluesky_ptycho.transport.control import request
from bluesky_ptycho.transport.publisher import Publisher


class Marker:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):  # unpickling creates the file: code from the network ran
        return (open, (self.path, "w"))


def payload(marker: Path) -> dict:
    """msgpack-numpy's object-array form: what would be unpickled if anything trusted it."""
    data = pickle.dumps(Marker(marker))
    return {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [1], b"data": data}


def _rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def malformed_documents(rng: random.Random, marker: Path, n: int) -> list[list[bytes]]:
    """*n* messages a broken or hostile sender could put on the documents socket."""
    good = [bytes(p) for p in codec.encode(
        "event", {"uid": "e", "descriptor": "d", "seq_num": 1, "time": 0.0,
                  "data": {"img": np.ones((8, 8), np.float32)}, "timestamps": {}}, run="r")]  # fmt: skip
    kinds = [
        lambda: [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))],
        lambda: [msgpack.packb(rng.choice([[1, 2], "x", 3.5, None, {"v": 1}]))],
        lambda: [
            msgpack.packb(
                {"v": 1, "name": rng.choice(["exec", "", 5, None]), "run": "r", "doc": {}}
            )
        ],
        lambda: [
            msgpack.packb(
                {
                    "v": 1,
                    "name": "start",
                    "run": "r",
                    "doc": {"uid": "s", "ptycho": payload(marker)},
                }
            )
        ],
        lambda: [
            msgpack.packb(
                {
                    "v": 1,
                    "name": "event",
                    "run": "r",
                    "doc": {"x": {"__nd__": 0, "dtype": "|O", "shape": [1]}},
                }
            ),
            b"\0" * 8,
        ],
        lambda: [good[0], good[1][: rng.randrange(len(good[1]))]],
        lambda: [good[0]] + [good[1]] * rng.randrange(2, 5),
        lambda: [
            bytes(b ^ (1 << rng.randrange(8)) if rng.random() < 0.02 else b for b in good[0]),
            good[1],
        ],
        lambda: [],
    ]
    out = []
    for _ in range(n):
        parts = kinds[rng.randrange(len(kinds))]()
        out.append(parts or [b""])
    return out


def malformed_requests(rng: random.Random, marker: Path) -> list[list[bytes]]:
    return [
        [b"a", b"b"],  # two frames
        [b"\xff\x00garbage"],
        [msgpack.packb([1, 2, 3])],
        [msgpack.packb({"command": 5})],
        [msgpack.packb({"command": "exec", "code": "print(1)"})],
        [
            msgpack.packb(
                {
                    "command": "set",
                    "stage": "reconstruction",
                    "params": {"final_iterations": 9223372036854775808},
                }
            )
        ],
        [
            msgpack.packb(
                {
                    "command": "set",
                    "stage": "reconstruction",
                    "params": {"snapshot_interval": float("inf")},
                }
            )
        ],
        [msgpack.packb({"command": "set", "stage": "nope", "params": {}})],
        [msgpack.packb({"command": "set", "stage": "reconstruction", "params": payload(marker)})],
        [msgpack.packb({"command": "abort", "reason": "x" * 100_000})],
        [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))],
        [b"\x91" * 5000],  # nesting far past any sane depth
    ]


@pytest.mark.slow
def test_serve_survives_thousands_of_malformed_messages_then_runs_a_scan(tmp_path):
    """2,000 malformed documents and 1,200 malformed control requests (two-frame requests
    among them, which used to end the process), then a real scan end to end."""
    marker = tmp_path / "code-ran"
    b = Backend(tmp_path / "backend", "--max-message-mb", "1")
    try:
        rng = random.Random(1)
        ctx = zmq.Context.instance()
        push = ctx.socket(zmq.PUSH)
        push.linger = 2000
        push.connect(b.address)
        sent = malformed_documents(rng, marker, 2000)
        for parts in sent:
            push.send_multipart(parts)
        dealer = ctx.socket(zmq.DEALER)  # speaks to ROUTER like many REQ clients at once
        dealer.linger = 0
        dealer.connect(b.control)
        requests = malformed_requests(rng, marker) * 100
        for parts in requests:
            dealer.send_multipart([b"", *parts])
        answered = 0
        deadline = time.monotonic() + 60
        while answered < len(requests) and time.monotonic() < deadline:
            if dealer.poll(1000):
                dealer.recv_multipart()
                answered += 1
        assert answered == len(requests), f"{answered} of {len(requests)} requests answered"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            c = b.status()["server"]["counters"]
            if c["malformed"] + c["oversized"] + c["received"] >= len(sent):
                break
            time.sleep(0.5)
        c = b.status()["server"]["counters"]
        print(f"counted: { ({k: v for k, v in c.items() if v}) }")
        assert b.proc.poll() is None
        assert c["malformed"] + c["oversized"] + c["orphan_documents"] >= len(sent) - c["received"]
        assert c["control_requests"] >= len(requests)  # (and the status requests here)
        # every one refused, but the 100 aborts (a valid command, its long reason cut short)
        assert c["control_malformed"] + c["control_refused"] == len(requests) - 100
        # the parameters were refused: nothing changed
        assert b.status()["params"]["reconstruction"]["final_iterations"] == 5
        # and a real scan goes through, end to end
        pub = Publisher(b.address)
        RE, fccd, stage, shutter = beamline(tmp_path / "raw", pub)
        (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=16, step=100e-9, num_darks=3))
        assert pub.flush(30)
        run = b.wait_finished(uid)
        pub.close()
        assert run["stages"]["reconstruction"]["frames_out"] > 0
        assert run["stages"]["frame_cleaning"]["frames_out"] == 16
        assert not marker.exists(), "code from a message ran"
        push.close()
        dealer.close()
    finally:
        b.stop()


def test_stray_documents_of_unknown_runs_never_make_status_wait(local_server, tmp_path):
    """Look-ups of runs the back-end has no start for run off the loop: 60 stray stop
    documents (each used to block the loop 10 s) leave `status` answering at once."""

    class SlowCatalog:  # a catalog that does not hold the runs, as slowly as a real one
        location = "test"
        writer = staticmethod(lambda name, doc: None)

        def documents(self, uid):
            raise KeyError(uid)

    server = local_server(catalog=SlowCatalog())
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.linger = 1000
    push.connect(server.address)
    for i in range(60):
        push.send_multipart(codec.encode("stop", {"uid": f"x{i}", "run_start": f"stray-{i}",
                                                  "time": 0.0, "exit_status": "success"}))  # fmt: skip
    time.sleep(0.5)
    t0 = time.monotonic()
    for _ in range(5):
        assert request("ping", server.control_address, timeout=2)["ok"]
    took = time.monotonic() - t0
    status = request("status", server.control_address, timeout=2)["status"]["server"]
    print(f"5 pings in {took:.3f} s with 60 stray runs pending; {status['counters']}")
    assert took < 2.0
    assert status["lookups_pending"] <= server.max_lookups
    push.close()


@pytest.mark.slow
def test_a_flood_of_runs_without_stops_is_capped_and_closed_with_threads_and_memory_flat(
    tmp_path,
):
    """200 start documents without stops, four times over, against a back-end in a process of
    its own (so that its memory is its own, not the test session's): at most 4 runs open, the
    rest refused; idle runs closed (their stages stopped, derived runs with exit_status
    'fail'); threads back where they were after every wave and memory flat from wave to wave;
    each run's log file holds that run only."""
    logs = tmp_path / "logs"
    script = Path(__file__).with_name("flood.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.parent.parent), *sys.path])}
    out = subprocess.run([sys.executable, str(script), str(logs), "4"], capture_output=True,
                         text=True, env=env, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(r)
    c, waves = r["counters"], r["waves"]
    assert c["refused_runs"] == 4 * 196 and c["idle_closed_runs"] == 4 * 4
    assert r["still_seen"] == 0 and not r["active"] and r["open"] == 0
    assert all(w["threads"] <= r["threads_before"] + 2 for w in waves)
    assert all(w["peak_threads"] < r["threads_before"] + 60 for w in waves)  # not 1,231
    # what Python and NumPy hold (tracemalloc) stays flat: measured 0.70 -> 0.84 MB over six
    # waves (1,200 runs); the flood once kept 30 MB per run (6 GB for 200). Resident memory
    # also moves with glibc's arenas (89 -> 142 MB in the same run, 89 -> 309 MB once on a
    # loaded machine), so it is only held to "not gigabytes".
    assert waves[-1]["python_mb"] - waves[0]["python_mb"] < 5
    assert max(w["rss_mb"] for w in waves) - r["rss_before_mb"] < 600
    assert r["stop_exit_statuses"] == ["fail"]
    files = sorted(logs.glob("*.log"))
    assert len(files) == 16
    for f in files:
        text = f.read_text()
        uid = f.stem.split("_", 2)[-1]
        others = [u for u in (g.stem.split("_", 2)[-1] for g in files) if u != uid]
        assert not any(u in text for u in others), f"{f.name} holds another run's messages"


def test_a_two_frame_control_request_is_answered_and_the_server_lives(local_server):
    server = local_server()
    req = zmq.Context.instance().socket(zmq.REQ)
    req.linger = 0
    req.connect(server.control_address)
    req.send_multipart([b"first", b"second"])
    assert req.poll(3000)
    reply = codec.unpack_value(req.recv())
    assert reply["ok"] is False and "one msgpack frame" in reply["error"]
    assert request("ping", server.control_address)["ok"]
    assert server.counters["control_malformed"] == 1
    req.close()


def test_documents_and_snapshots_with_the_payload_run_nothing(local_server, tmp_path):
    from bluesky_ptycho.transport.snapshots import SnapshotSubscriber

    marker = tmp_path / "code-ran"
    port = free_port()
    server = local_server(snapshot_port=port)
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.linger = 1000
    push.connect(server.address)
    push.send_multipart([msgpack.packb({"v": 1, "name": "start", "run": "r",
                                        "doc": {"uid": "s", "ptycho": payload(marker)}})])  # fmt: skip
    sub = SnapshotSubscriber(f"tcp://127.0.0.1:{port}")
    pub = zmq.Context.instance().socket(zmq.PUB)  # a hostile publisher on the viewer's side
    pub.bind(f"tcp://127.0.0.1:{free_port()}")
    sub._sock.connect(pub.getsockopt_string(zmq.LAST_ENDPOINT))
    time.sleep(0.5)
    for _ in range(5):
        pub.send_multipart([msgpack.packb({"v": 1, "name": "event", "run": "r",
                                           "doc": {"uid": "e", "x": payload(marker)}})])  # fmt: skip
    deadline = time.monotonic() + 5
    while (server.counters["malformed"] < 1 or sub.malformed < 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.counters["malformed"] == 1 and sub.malformed >= 1
    assert not marker.exists()
    sub.close()
    pub.close()
    push.close()
