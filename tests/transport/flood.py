"""A flood of start documents without stops against a back-end of its own, in a process of
its own so that its memory is measured alone: ``python flood.py LOG_DIR WAVES``. Prints one
JSON line with the figures that the hardening test checks: threads, the process's resident
memory, and the memory Python and NumPy hold (tracemalloc, from the first wave on) — the
last is what a leak grows; resident memory also moves with glibc's arenas."""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import zmq
from tiled_serve import free_port

from bluesky_ptycho.io import codec
from bluesky_ptycho.pipeline.runner import Pipeline
from bluesky_ptycho.transport.server import Server


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_doc(uid: str) -> dict:
    return {"uid": uid, "time": time.time(), "scan_id": 1,
            "ptycho": {"energy_ev": 800.0, "distance_m": 0.08, "pixel_size_m": 30e-6,
                       "crop_px": 512, "frame_px": 64, "num_points": 4, "num_darks": 0,
                       "positions_m": [[0.0, 0.0], [1e-7, 0.0], [0.0, 1e-7], [1e-7, 1e-7]]}}  # fmt: skip


def main(logs: Path, waves: int, per_wave: int = 200) -> dict:
    pipe = Pipeline(output_dir=None, log_dir=logs)
    stops: list[str] = []
    pipe.subscribe(lambda name, doc: stops.append(doc["exit_status"]) if name == "stop" else None)
    server = Server(pipe, port=free_port(), control_port=free_port(),
                    snapshot_port=free_port(), max_open_runs=4, run_idle_timeout=2.0)  # fmt: skip
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.linger = 1000
    push.connect(server.address)
    gc.collect()
    threads0, rss0 = threading.active_count(), rss_mb()
    tracemalloc.start()
    figures = []
    for wave in range(waves):
        for i in range(per_wave):
            push.send_multipart(codec.encode("start", start_doc(f"flood-{wave}-{i:03d}")))
        deadline = time.monotonic() + 60
        while server.counters["received"] < per_wave * (wave + 1) and time.monotonic() < deadline:
            time.sleep(0.1)
        peak_threads = threading.active_count()
        deadline = time.monotonic() + 60
        while (server._seen or pipe.active()) and time.monotonic() < deadline:
            time.sleep(0.2)
        # and the closed runs' threads gone: one still ending holds its run's arrays (52 MB
        # once, in the second of four waves, back to 0.73 MB in the third)
        while threading.active_count() > threads0 and time.monotonic() < deadline:
            time.sleep(0.1)
        gc.collect()
        figures.append({"peak_threads": peak_threads, "threads": threading.active_count(),
                        "rss_mb": round(rss_mb(), 1),
                        "python_mb": round(tracemalloc.get_traced_memory()[0] / 2**20, 2)})  # fmt: skip
    result = {"threads_before": threads0, "rss_before_mb": round(rss0, 1), "waves": figures,
              "counters": dict(server.counters), "still_seen": len(server._seen),
              "active": bool(pipe.active()), "open": len(pipe._open),
              "stop_exit_statuses": sorted(set(stops))}  # fmt: skip
    push.close()
    server.stop()
    thread.join(10)
    server.close()
    pipe.close()
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), int(sys.argv[2]))))
