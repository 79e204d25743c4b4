"""Benchmark: the remote back-end end to end — frames/s through ZeroMQ, `serve` and Dask.

Run with ``make bench-remote`` (or ``python benchmarks/remote.py --frames 10000``).

A real 16-point scan is taken once with the simulated FCCD (its HDF5 file
and documents); a long run is then composed from it: the same start
metadata and dark frames, and N primary events whose StreamDatum documents
point at the 16 recorded frames in turn (so the frames are full-size raw
FCCD frames with every simulated defect, and the back-end reads or receives
each one; the simulator itself, 65 ms a frame, is not timed). The run is
published with the project's Publisher to ``bluesky-ptycho serve`` running
dark statistics and frame cleaning on Dask, and timed from the start
document to the cleaning stage's last frame. For each transport ("file":
the back-end reads the detector file; "inline": frames sent as raw
buffers) and each worker count it reports frames/s, speed-up T1/Tp and
efficiency T1/(p·Tp), frames out (zero loss: all N), and the peak memory
(RSS) of the back-end and its workers together, sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
from event_model import compose_run

from bluesky_ptycho.transport import address
from bluesky_ptycho.transport.control import ControlError, request
from bluesky_ptycho.transport.publisher import Publisher

PIPELINE = """
[pipeline]
device = "cpu"
cxi = false

[stages.dark_statistics]
inputs = ["raw"]

[stages.frame_cleaning]
inputs = ["raw", "dark_statistics"]
where = "dask"
params = { batch_size = 8 }
"""


def record_scan(folder: Path) -> list[tuple[str, dict]]:
    """A real 16-point scan with 8 darks: its documents (frames in HDF5 under *folder*)."""
    from bluesky import RunEngine

    from bluesky_ptycho.acquisition.plans import ptycho_scan
    from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD

    RE = RunEngine({})
    docs: list = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    stage, shutter = SampleStage(name="stage"), Shutter(name="shutter")
    fccd = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=folder)
    RE(ptycho_scan(fccd, stage, shutter, num_points=16, step=100e-9, num_darks=8))
    return docs


def long_run(docs: list[tuple[str, dict]], n: int):
    """The documents of an *n*-point run made of the recorded one (generator)."""
    start = next(d for name, d in docs if name == "start")
    md = {k: v for k, v in start.items() if k not in ("uid", "time")}
    md["num_points"] = n
    bundle = compose_run(metadata=md)
    yield "start", bundle.start_doc
    descs = {d["uid"]: d for name, d in docs if name == "descriptor"}
    new_desc = {}
    for uid, d in descs.items():
        b = bundle.compose_descriptor(
            name=d["name"],
            data_keys=d["data_keys"],
            object_keys=d.get("object_keys", {}),
            configuration=d.get("configuration", {}),
        )
        new_desc[uid] = b
        yield "descriptor", b.descriptor_doc
    resources = {}
    for name, d in docs:
        if name == "stream_resource":
            r = {**d, "uid": str(uuid.uuid4()), "run_start": bundle.start_doc["uid"]}
            resources[d["uid"]] = r
            yield "stream_resource", r
    datums = [d for name, d in docs if name == "stream_datum"]
    events = [d for name, d in docs if name == "event"]
    by_seq = {(d["descriptor"], d["seq_nums"]["start"]): d for d in datums}
    dark = [e for e in events if descs[e["descriptor"]]["name"] == "dark"]
    primary = [e for e in events if descs[e["descriptor"]]["name"] == "primary"]
    for stream_events, count in ((dark, len(dark)), (primary, n)):
        if not stream_events:
            continue
        desc = stream_events[0]["descriptor"]
        for i in range(count):
            src = stream_events[i % len(stream_events)]
            datum = by_seq[(desc, src["seq_num"])]
            yield (
                "stream_datum",
                {
                    **datum,
                    "uid": str(uuid.uuid4()),
                    "stream_resource": resources[datum["stream_resource"]]["uid"],
                    "descriptor": new_desc[desc].descriptor_doc["uid"],
                    "seq_nums": {"start": i + 1, "stop": i + 2},
                },
            )
            yield (
                "event",
                new_desc[desc].compose_event(
                    data=src["data"], timestamps=src["timestamps"], seq_num=i + 1
                ),
            )
    yield "stop", bundle.compose_stop()


def tree_rss(pid: int) -> int:
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def one_case(docs, n: int, workers: int, frames: str, folder: Path) -> dict:
    port, control_port = _free(), _free()
    pipeline = folder / "bench.toml"
    pipeline.write_text(PIPELINE)
    env = {
        **os.environ,
        "BLUESKY_PTYCHO_DATA": str(folder / "data"),
        "BLUESKY_PTYCHO_LOGS": str(folder / "logs"),
    }
    log = (folder / f"serve-{workers}-{frames}.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("bluesky-ptycho")),
            "serve",
            str(pipeline),
            "--port",
            str(port),
            "--control-port",
            str(control_port),
            "--workers",
            str(workers),
            "--no-catalog",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    control = address("127.0.0.1", control_port)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                request("ping", control, timeout=1)
                break
            except ControlError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"serve did not start: {log.name}") from None
        pub = Publisher(address("127.0.0.1", port), frames=frames)
        run = list(long_run(docs, n))
        uid = run[0][1]["uid"]
        peak = 0
        t0 = time.perf_counter()
        for name, doc in run:
            pub(name, doc)
        while True:
            peak = max(peak, tree_rss(proc.pid))
            st = request("status", control, timeout=30)["status"]
            r = st["runs"].get(uid)
            if r is not None and r["stages"]["frame_cleaning"]["state"] == "done":
                break
            if time.perf_counter() - t0 > 3600:
                raise TimeoutError("the run did not finish within an hour")
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        out = r["stages"]["frame_cleaning"]["frames_out"]
        cpu = _cpu_seconds(proc.pid)
        pub.close()
        return {
            "workers": workers,
            "frames": frames,
            "n": n,
            "seconds": round(seconds, 2),
            "frames_per_s": round(n / seconds, 1),
            "frames_out": out,
            "lost": n - out,
            "peak_rss_mb": round(peak / 2**20),
            "backlog_limit": st["server"]["max_backlog"],
            "paused_polls": st["server"].get("paused_polls", 0),
            "cpu_ms_per_frame": {k: round(1000 * v / n, 2) for k, v in cpu.items()},
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of the serve process, its Dask workers (and
    their nannies and the scheduler, its children), and this publishing process."""
    serve = psutil.Process(pid)
    t = serve.cpu_times()
    rest = 0.0
    for c in serve.children(recursive=True):
        try:
            ct = c.cpu_times()
            rest += ct.user + ct.system
        except psutil.NoSuchProcess:
            pass
    me = psutil.Process().cpu_times()
    return {"serve": t.user + t.system, "workers": rest, "publisher": me.user + me.system}


def _free() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000, help="primary frames per case")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--transport", nargs="+", default=["file", "inline"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        docs = record_scan(folder / "raw")
        rows = []
        for frames in args.transport:
            for w in args.workers:
                row = one_case(docs, args.frames, w, frames, folder)
                rows.append(row)
                print(json.dumps(row), flush=True)
    for frames in args.transport:
        base = next((r for r in rows if r["frames"] == frames and r["workers"] == 1), None)
        for r in rows:
            if r["frames"] == frames and base is not None:
                r["speedup"] = round(base["seconds"] / r["seconds"], 2)
                r["efficiency"] = round(base["seconds"] / (r["workers"] * r["seconds"]), 2)
    print(
        f"\n{'transport':<10}{'workers':>8}{'frames':>8}{'frames/s':>10}{'speed-up':>10}"
        f"{'effic.':>8}{'lost':>6}{'peak RSS MB':>13}  CPU ms/frame (serve, workers)"
    )
    for r in rows:
        print(
            f"{r['frames']:<10}{r['workers']:>8}{r['n']:>8}{r['frames_per_s']:>10}"
            f"{r.get('speedup', ''):>10}{r.get('efficiency', ''):>8}{r['lost']:>6}"
            f"{r['peak_rss_mb']:>13}  {r['cpu_ms_per_frame']['serve']}, "
            f"{r['cpu_ms_per_frame']['workers']}"
        )
    out = Path(__file__).with_name(f"remote-{platform.node() or 'host'}.json")
    out.write_text(
        json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(), "rows": rows}, indent=1)
    )
    print(f"written: {out}")


if __name__ == "__main__":
    main()
