"""The remote back-end over real sockets: ``bluesky-ptycho serve`` with Dask workers,
the RunEngine's Publisher, the control channel, faults and security."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from backends import Backend, beamline
from tiled_serve import TiledServe, free_port

from bluesky_ptycho.acquisition.plans import ptycho_scan
from bluesky_ptycho.io import codec
from bluesky_ptycho.pipeline.runner import Pipeline
from bluesky_ptycho.plugins.stage import Stage
from bluesky_ptycho.transport.control import ControlError, request
from bluesky_ptycho.transport.publisher import Publisher
from bluesky_ptycho.transport.security import generate_keys
from bluesky_ptycho.transport.server import Server


def cleaned_points(catalog, uid: str) -> list[int]:
    """The points of the stored cleaned frames, in the order the stage emitted them."""
    derived = catalog.derived(uid)
    return [int(p) for p in derived["frame_cleaning"]["cleaned"]["point"].read()]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = Backend(tmp_path_factory.mktemp("backend"))
    yield b
    b.stop()


@pytest.mark.parametrize("frames", ["file", "inline"])
def test_a_scan_published_over_zeromq_is_cleaned_on_two_dask_workers_and_reconstructed(
    backend, tmp_path, frames
):
    from bluesky_ptycho.transport.snapshots import SnapshotSubscriber
    from bluesky_ptycho.viewer.model import LiveModel

    viewer = LiveModel()  # what the napari widget shows, fed by the back-end's PUB socket
    results = SnapshotSubscriber(backend.results)
    results.subscribe(viewer)
    time.sleep(0.5)  # a SUB socket gets what is published after it has connected
    pub = Publisher(backend.address, frames=frames)
    RE, fccd, stage, shutter = beamline(tmp_path / "raw", pub)
    (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=25, step=100e-9, num_darks=5))
    assert pub.flush(30)
    run = backend.wait_finished(uid)
    pub.close()
    deadline = time.monotonic() + 10
    while not viewer.take().final and time.monotonic() < deadline:
        time.sleep(0.1)
    results.close()
    shown = viewer.take()
    assert shown.final and shown.run == uid and shown.object is not None
    assert len(shown.stxm) == 25 and shown.frame is not None and len(shown.errors) > 0
    status = backend.status()
    assert status["workers"]["n"] == 2
    stages = run["stages"]
    assert stages["frame_cleaning"]["frames_out"] == 25
    assert stages["reconstruction"]["state"] == "done"
    assert all(not s["last_error"] for s in stages.values()), stages
    c = status["server"]["counters"]
    assert c["malformed"] == c["oversized"] == c["errors"] == c["pipeline_errors"] == 0
    assert (backend.folder / "data" / "cxi" / f"scan_{RE.md.get('scan_id', 1)}.cxi").exists()


def test_a_killed_worker_is_replaced_and_every_frame_comes_out_once(tmp_path):
    """Kill a Dask worker (by pid) mid-scan: the nanny starts another, the lost batch is
    redone, and the stored cleaned run holds every point exactly once."""
    from bluesky_ptycho.storage.catalog import Catalog

    b = Backend(tmp_path / "backend")
    n = 40
    killed: list[int] = []
    try:
        pub = Publisher(b.address)
        RE, fccd, stage, shutter = beamline(tmp_path / "raw", pub)
        before = b.status()["workers"]["pids"]

        def kill_when_cleaning() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                for run in b.status()["runs"].values():
                    if not run["finished"] and run["stages"]["frame_cleaning"]["frames_out"] >= 8:
                        killed.append(sorted(before.values())[0])
                        os.kill(killed[0], signal.SIGKILL)
                        return
                time.sleep(0.1)

        killer = threading.Thread(target=kill_when_cleaning)
        killer.start()
        (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=n, step=100e-9, num_darks=3))
        killer.join()
        assert killed, "the scan ended before a worker could be killed"
        run = b.wait_finished(uid)
        pub.close()
        assert run["stages"]["frame_cleaning"]["frames_out"] == n
        assert run["stages"]["reconstruction"]["state"] == "done"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = b.status()["workers"]
            if after.get("n") == 2 and killed[0] not in after["pids"].values():
                break
            time.sleep(0.5)
        assert after["n"] == 2 and killed[0] not in after["pids"].values(), after
    finally:
        b.stop()  # SIGTERM: the back-end writes what it holds to its catalog, then exits
    assert b.proc.returncode == 0, b.log_text()
    catalog = Catalog(directory=tmp_path / "backend" / "data")
    try:
        # each once (none lost, none twice), in scan order although batches finish out of order
        assert cleaned_points(catalog, uid) == list(range(n))
        assert bool(catalog.derived(uid)["reconstruction"]["snapshot"]["final"].read()[-1])
    finally:
        catalog.close()


def test_control_channel_sets_aborts_clears_and_resets(backend, tmp_path):
    with pytest.raises(ControlError, match="bogus"):
        request("set", backend.control, stage="reconstruction", params={"bogus": 1})
    pub = Publisher(backend.address)
    RE, fccd, stage, shutter = beamline(tmp_path / "raw", pub)
    seen: dict = {}

    def operator() -> None:  # the RunEngine keeps the main thread; the operator acts meanwhile
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = backend.status()["runs"]
            active = [u for u, r in runs.items() if not r["finished"]]
            if active and runs[active[0]]["stages"]["reconstruction"]["frames_in"] > 0:
                break
            time.sleep(0.2)
        seen["active"] = active
        seen["live"] = request(
            "set", backend.control, stage="reconstruction", params={"final_iterations": 2}
        )["applied"]
        seen["next"] = request(
            "set", backend.control, stage="reconstruction", params={"algorithm": "dm"}
        )["applied"]
        seen["aborted"] = request("abort", backend.control)["aborted"]

    t = threading.Thread(target=operator)
    t.start()
    RE(ptycho_scan(fccd, stage, shutter, num_points=60, step=100e-9, num_darks=3))
    t.join(60)
    pub.close()
    assert seen["live"]["final_iterations"] == "now, and from the next run"
    assert seen["next"]["algorithm"] == "from the next run"
    assert seen["aborted"] == seen["active"]
    deadline = time.monotonic() + 30
    while not backend.status()["runs"][seen["active"][0]]["finished"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    run = backend.status()["runs"][seen["active"][0]]
    assert {s["state"] for s in run["stages"].values()} == {"aborted"}
    assert backend.status()["params"]["reconstruction"]["algorithm"] == "dm"
    assert seen["active"][0] in request("clear", backend.control)["cleared"]
    request("reset", backend.control)
    status = backend.status()
    assert status["runs"] == {} and status["params"]["reconstruction"]["final_iterations"] == 5


def test_status_command_prints_the_stages(backend):
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("bluesky-ptycho")),
            "status",
            "--control",
            backend.control,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "documents received" in out.stdout and "dask: 2 worker(s)" in out.stdout


WATCHED_POINTS = 36


@pytest.fixture(scope="module")
def watched(backend, tmp_path_factory):
    """A scan on the back-end while ``status --watch 0.5`` runs in a pseudo-terminal: the
    run's uid, what the terminal received, and what ``serve`` printed meanwhile."""
    master, slave = os.openpty()
    cmd = [str(Path(sys.executable).with_name("bluesky-ptycho")), "status", "--watch", "0.5",
           "--control", backend.control]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    received = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end closed
                return
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    served = len(backend.log_text())
    try:
        pub = Publisher(backend.address)
        RE, fccd, stage, shutter = beamline(tmp_path_factory.mktemp("watched"), pub)
        (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=WATCHED_POINTS, step=100e-9,
                                num_darks=3))  # fmt: skip
        assert pub.flush(30)
        backend.wait_finished(uid)
        pub.close()
        time.sleep(2)  # a few more redraws of the finished run
        time.sleep(1)  # and serve's last line about it
    finally:
        proc.terminate()
        proc.wait(30)
        reader.join(10)
        os.close(master)
    return uid, received.decode("utf-8", "replace"), backend.log_text()[served:]


def _row(frame: str, stage: str) -> list[str]:
    line = next(x for x in frame.splitlines() if x.strip().startswith(stage + " "))
    return line.split()


def test_status_watch_redraws_in_place_with_rates_that_match_the_counts(watched):
    from bluesky_ptycho.cli.status import HOME_CLEAR

    uid, text, _ = watched
    frames = [f.replace("\x1b[K", "") for f in text.split(HOME_CLEAR)[1:]]
    mine = [f for f in frames if f"run {uid[:8]}" in f]
    assert len(mine) >= 10, text[-3000:]
    # redrawn in place: every frame starts at the top left, and while the same runs are shown
    # the table keeps its height (a new run adds its rows)
    assert len({f.count("\n") for f in mine}) == 1, [f.count("\n") for f in mine]
    assert "\x1b[2J" not in text  # the screen is not blanked: each line is overwritten
    # frames flowing: the cleaning (on Dask, in batches of 4) reads a steady rate between
    # batches, not 0.0
    flowing = []
    for f in mine:
        state, _, rate_in, n_out, rate_out = _row(f, "frame_cleaning")[1:6]
        if state == "running" and 0 < int(n_out) < WATCHED_POINTS:
            flowing.append((float(f.split(" up ")[1].split()[0]), int(n_out), float(rate_out)))
            assert float(rate_in) > 0 and float(rate_out) > 0, f
    assert len(flowing) >= 5, text[-3000:]
    # the rate is the count's change over the last 10 s (taken at the server's polls: the
    # watch's and the test's, within a second of each other); a batch is 4 frames
    for up, n_out, rate in flowing:
        before = [(u, n) for u, n, _ in flowing if u <= up - 10]
        if before:
            u0, n0 = before[-1]
            expected = (n_out - n0) / (up - u0)
            assert abs(rate - expected) <= 0.6 + 0.25 * expected, (rate, expected, up)
    # where the reconstruction stands, while it runs and at the end
    lines = [
        x.strip() for f in mine for x in f.splitlines() if x.strip().startswith("reconstruction:")
    ]
    running = [x for x in lines if x.startswith("reconstruction: scan, iteration")]
    assert (
        running
        and "data error 0." in running[-1]
        and f"of {WATCHED_POINTS} frames used" in running[-1]
    )
    assert lines[-1].startswith("reconstruction: done, iteration") and "resolution" in lines[-1]


def test_status_watch_into_a_pipe_writes_a_block_only_when_something_changed(local_server):
    server = local_server()
    cmd = [str(Path(sys.executable).with_name("bluesky-ptycho")), "status", "--watch", "0.2",
           "--control", server.control_address]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while server.counters["control_requests"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # many polls, nothing happening
    proc.terminate()
    out, err = proc.communicate(30)
    assert server.counters["control_requests"] >= 8, err
    assert out.count("\n-- ") + out.startswith("-- ") == 1, out
    assert "\x1b" not in out and "no runs yet" in out


def test_serve_prints_a_line_as_a_run_begins_and_one_when_it_is_done(watched):
    uid, _, served = watched
    ours = [x for x in served.splitlines() if " bluesky_ptycho" in x]
    info = [x for x in ours if x.startswith("INFO")]
    assert len(info) == 2, served
    assert f"run {uid} (scan" in info[0] and "started; log" in info[0]
    assert f"run {uid} (scan" in info[1] and " done in " in info[1]
    assert "iteration(s), data error" in info[1] and "CXI " in info[1]
    assert len(ours) <= 4, served  # and a warning or two at most
    assert "error(s) in this stage" not in served and "(raw) in" not in served


# -- security and bad input, on an in-process server (tests/transport/conftest.py) ----------
def test_binding_beyond_localhost_needs_keys():
    with pytest.raises(ValueError, match=r"needs CURVE keys.*bluesky-ptycho keys"):
        Server(Pipeline(), host="0.0.0.0", port=free_port(), control_port=free_port())


def test_only_clients_with_the_key_are_admitted(local_server, tmp_path):
    keys = generate_keys(tmp_path / "keys")
    other = generate_keys(tmp_path / "other")
    server = local_server(keys=keys)
    assert request("ping", server.control_address, keys=keys)["ok"]
    with pytest.raises(ControlError, match="no answer"):
        request("ping", server.control_address, timeout=1.5)  # no key: no CURVE handshake
    with pytest.raises(ControlError, match="no answer"):
        request("ping", server.control_address, keys=other, timeout=1.5)  # not authorized
    # documents likewise: a publisher without the key gets nothing through
    stranger = Publisher(server.address)
    stranger("start", {"uid": "x" * 36, "time": 0.0})
    friend = Publisher(server.address, keys=keys)
    friend("start", {"uid": "y" * 36, "time": 0.0})
    deadline = time.monotonic() + 10
    while server.counters["received"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert server.counters["received"] == 1
    stranger.close(0.1)
    friend.close(1)


def test_malformed_and_oversized_messages_are_rejected_and_counted(local_server):
    server = local_server(max_message_bytes=2**20)
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.linger = 1000
    sock.connect(server.address)
    header = msgpack.packb(
        {
            "v": 1,
            "name": "event",
            "run": "r",
            "doc": {"uid": "e", "data": {"img": {"__nd__": 0, "dtype": "<u2", "shape": [4, 4]}}},
        }
    )
    bad = [
        [b"\x00\xff not msgpack"],
        [msgpack.packb([1, 2, 3])],
        [msgpack.packb({"v": 99, "name": "start", "doc": {}})],
        [msgpack.packb({"v": 1, "name": "exec", "doc": {}})],
        [header, b"12345"],  # 5 bytes for a 4 × 4 uint16 array
        [header],  # the buffer is missing
        [
            msgpack.packb(
                {
                    "v": 1,
                    "name": "event",
                    "run": "r",
                    "doc": {"uid": "o", "data": {"x": {"__nd__": 0, "dtype": "|O", "shape": [1]}}},
                }
            ),
            b"\0" * 8,
        ],
    ]
    for parts in bad:
        sock.send_multipart(parts)
    sock.send_multipart(
        codec.encode(
            "event", {"uid": "big", "data": {"img": np.zeros((1024, 1024), np.uint16)}}, run="r"
        )
    )
    good = codec.encode("start", {"uid": "s" * 36, "time": 0.0, "scan_id": 1})
    sock.send_multipart(good)
    deadline = time.monotonic() + 10
    while server.counters["received"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.counters["malformed"] == len(bad)
    assert server.counters["oversized"] == 1
    assert server.counters["received"] == 1  # and the server goes on
    assert request("ping", server.control_address)["ok"]
    sock.close()


def test_documents_of_a_run_never_started_are_set_aside(local_server):
    """A back-end restarted without a catalog cannot pick up a run in progress: it says so
    once and counts that run's documents, and takes the next run normally."""
    server = local_server()
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.linger = 1000
    sock.connect(server.address)
    for i in range(3):
        sock.send_multipart(
            codec.encode(
                "event",
                {"uid": f"e{i}", "descriptor": "d", "seq_num": i + 1, "data": {}},
                run="lost-run",
            )
        )
    sock.send_multipart(codec.encode("start", {"uid": "s" * 36, "time": 0.0}))
    deadline = time.monotonic() + 10
    while server.counters["received"] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.counters["orphan_runs"] == 1 and server.counters["orphan_documents"] == 3
    assert server.counters["pipeline_errors"] == 0
    sock.close()


def test_codec_round_trip_keeps_arrays_without_copies():
    frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
    parts = codec.encode("event", {"uid": "u", "data": {"img": frame, "x": 1.5}}, run="r")
    assert len(parts) == 2 and parts[1].obj is frame  # the frame's own memory goes out
    name, doc, run = codec.decode(parts)
    assert (name, run) == ("event", "r")
    assert np.array_equal(doc["data"]["img"], frame) and doc["data"]["x"] == 1.5


# -- restart: the back-end resumes from the stored documents -----------------------------------
def test_a_backend_restarted_mid_scan_resumes_from_the_stored_documents(tmp_path):
    from bluesky_ptycho.storage.catalog import Catalog

    tiled = TiledServe(tmp_path / "tiled").start()
    catalog = Catalog(tiled.uri, api_key=tiled.api_key)
    extra = ("--catalog", tiled.uri, "--api-key", tiled.api_key)
    b = Backend(tmp_path / "backend", *extra)
    ports = (b.port, b.control_port)
    try:
        pub = Publisher(b.address)
        RE, fccd, stage, shutter = beamline(tiled.read, pub, catalog)
        n = 40
        restarted = []

        def restart() -> None:
            nonlocal b
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                runs = b.status()["runs"]
                if any(r["stages"]["frame_cleaning"]["frames_out"] >= 10 for r in runs.values()):
                    break
                time.sleep(0.1)
            b.stop(kill=True)
            b = Backend(tmp_path / "backend2", *extra, ports=ports)
            restarted.append(b)

        t = threading.Thread(target=restart)
        t.start()
        (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=n, step=100e-9, num_darks=3))
        t.join(180)
        assert restarted
        run = b.wait_finished(uid)
        pub.close()
        assert b.status()["server"]["counters"]["resumed_runs"] == 1
        assert run["stages"]["frame_cleaning"]["frames_out"] == n
        assert run["stages"]["reconstruction"]["state"] == "done"
    finally:
        b.stop()
        catalog.close()
        tiled.stop()


# -- a slow stage grows its own backlog, nothing upstream -------------------------------------
class SlowSink(Stage):
    """A consumer stalled until released (then 5 ms a frame): however fast the machine, it
    has not caught up when the pipeline is done. (It took 50 ms a frame before; on a VM
    2.4x slower than the one it was written on the scan took long enough for it to keep
    up: backlog 13-17, not over 30.)"""

    stage_name = "slow_sink"

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    def event_page(self, doc: dict) -> None:
        self.released.wait(300)
        time.sleep(0.005 * len(doc["seq_num"]))


def test_a_slow_stage_slows_nothing_upstream_but_its_own_backlog(tmp_path):
    pipe = Pipeline(params={"reconstruction": {"final_iterations": 1}})
    slow = SlowSink()
    pipe.subscribe(slow)  # every document of every stage also goes to the slow one
    RE, fccd, stage, shutter = beamline(tmp_path / "raw", pipe)
    (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=30, step=100e-9, num_darks=3))
    run = pipe.wait(uid, timeout=120)
    # every stage of the pipeline is done while the slow one is still working through
    # what they sent it
    assert run.by_stage("frame_cleaning").frames_out == 30
    assert slow.backlog() > 30, slow.status()
    slow.released.set()
    slow.close()
    assert slow.join(60)
    assert slow.backlog() == 0
