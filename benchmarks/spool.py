"""What durability costs the caller: time per document for CatalogWriter.__call__.

Every document is appended to its run's spool file (one checksummed record, one
``writev``) before the call returns, so a process killed with SIGKILL loses
nothing it had emitted; ``durability="machine"`` also fsyncs each record. This
measures the caller's time per document for the kinds a scan emits, both ways,
side by side in one run (the catalog itself is left unreachable, so its thread
only retries and the figure is the spool's alone)::

    python benchmarks/spool.py [--n 400] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bluesky_ptycho.storage.writer import CatalogWriter


def unreachable():
    raise ConnectionError("not measured: the spool alone is")


def documents(kind: str, n: int) -> list[tuple[str, dict]]:
    run = str(uuid.uuid4())
    desc = str(uuid.uuid4())
    start = ("start", {"uid": run, "time": time.time(), "scan_id": 1})
    descriptor = ("descriptor", {"uid": desc, "run_start": run, "name": "primary", "time": 0.0,
                                 "data_keys": {}})  # fmt: skip
    if kind == "raw event (frame referenced)":
        data = {"stage_x": 1e-7, "stage_y": 2e-7, "stage_point": 3, "fccd_frame_number": 4}
    elif kind == "cleaned frame 128² float32":
        data = {"frame": np.random.default_rng(0).random((128, 128), np.float32), "point": 1}
    else:  # snapshot: object 600² complex64 + probe 128² complex64
        data = {"object": np.ones((600, 600), np.complex64),
                "probe": np.ones((1, 128, 128), np.complex64)}  # fmt: skip
    events = [("event", {"uid": str(uuid.uuid4()), "descriptor": desc, "seq_num": i + 1,
                         "time": time.time(), "data": data, "timestamps": {}, "filled": {}})
              for i in range(n)]  # fmt: skip
    return [start, descriptor, *events]


def measure(kind: str, durability: str, n: int, folder: Path) -> dict:
    writer = CatalogWriter(unreachable, folder / f"spool-{durability}", retry_interval=3600,
                           durability=durability)  # fmt: skip
    docs = documents(kind, n)
    for name, doc in docs[:2]:
        writer(name, doc)
    times = []
    for name, doc in docs[2:]:
        t0 = time.perf_counter()
        writer(name, doc)
        times.append(time.perf_counter() - t0)
    size = sum(p.stat().st_size for p in (folder / f"spool-{durability}").glob("*"))
    writer._worker.close()
    return {
        "kind": kind,
        "durability": durability,
        "median_us": 1e6 * statistics.median(times),
        "p95_us": 1e6 * sorted(times)[int(0.95 * len(times))],
        "bytes_per_document": size / len(docs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400, help="documents per case")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # the disk the data would be on
        for kind in ("raw event (frame referenced)", "cleaned frame 128² float32",
                     "snapshot (object 600² + probe)"):  # fmt: skip
            for durability in ("process", "machine"):
                n = args.n if not kind.startswith("snapshot") else max(20, args.n // 10)
                rows.append(measure(kind, durability, n, Path(tmp) / f"{len(rows)}"))
                r = rows[-1]
                print(f"{kind:<34} {durability:<8} median {r['median_us']:9.1f} µs  p95 "
                      f"{r['p95_us']:9.1f} µs  {r['bytes_per_document'] / 1024:9.1f} KiB/doc")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
