"""How long ``bluesky-ptycho runs`` takes on a catalog of a few hundred scans.

Stores *--runs* small scans (a start, a three-event ``primary`` stream, a stop:
real documents through the real :class:`~bluesky_ptycho.storage.writer.CatalogWriter`
into the embedded catalog), each with *--derived* runs a stage would derive,
and every tenth one replayed (two runs marked ``replay``). Then times:

- ``bluesky-ptycho runs`` end to end, a new process each time (Python's start-up,
  the imports, the listing, the printing);
- the listing in this process (:func:`bluesky_ptycho.storage.listing.latest_runs`);
- for comparison, the way ``runs`` used to list: the embedded Tiled server opened
  and the raw runs read through Tiled's client::

    python benchmarks/runs.py [--runs 300] [--derived 2] [--keep DIR] [--json out.json]

``--keep DIR`` stores the catalog there, and times an existing one without storing again.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from event_model import compose_run

from bluesky_ptycho.storage.catalog import Catalog
from bluesky_ptycho.storage.listing import latest_runs

STAGES = ("dark_statistics", "frame_cleaning", "reconstruction", "stxm", "quality")


def store(folder: Path, runs: int, derived: int) -> float:
    """Store the runs; the seconds it took."""
    t0 = time.perf_counter()
    cat = Catalog(directory=folder)
    try:
        w = cat.writer
        for i in range(runs):
            scan = compose_run(metadata={"scan_id": i + 1, "plan_name": "ptycho_scan",
                                         "ptycho": {"num_points": 3}})  # fmt: skip
            w("start", scan.start_doc)
            desc = scan.compose_descriptor(
                name="primary", data_keys={"x": {"source": "sim", "dtype": "number", "shape": []}}
            )
            w("descriptor", desc.descriptor_doc)
            for j in range(3):
                w("event", desc.compose_event(data={"x": j}, timestamps={"x": time.time()}))
            w("stop", scan.compose_stop())
            uid = scan.start_doc["uid"]
            made = [{"stage": s} for s in STAGES[:derived]]
            if i % 10 == 9:
                made += [{"stage": s, "replay": True, "replay_id": f"replay-{i}"}
                         for s in ("frame_cleaning", "reconstruction")]  # fmt: skip
            for md in made:
                run = compose_run(metadata={"source_run": uid, "source_scan_id": i + 1, **md})
                w("start", run.start_doc)
                w("stop", run.compose_stop())
            if i % 50 == 49:
                print(f"  {i + 1} scans stored", flush=True)
        if not w.flush(1800):
            raise RuntimeError("the catalog writer did not finish within 30 min")
    finally:
        cat.close()
    return time.perf_counter() - t0


def time_cli(folder: Path, repeat: int) -> list[float]:
    env = {**os.environ, "BLUESKY_PTYCHO_DATA": str(folder)}
    env.pop("BLUESKY_PTYCHO_CATALOG", None)
    cli = Path(sys.executable).with_name("bluesky-ptycho")
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run([str(cli), "runs"], env=env, capture_output=True, text=True)
        out.append(time.perf_counter() - t0)
        if done.returncode:
            raise RuntimeError(done.stderr)
    print(done.stdout)
    return out


def time_listing(folder: Path, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        latest_runs(10, folder)
        out.append(time.perf_counter() - t0)
    return out


def time_through_tiled(folder: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    cat = Catalog(directory=folder)
    t1 = time.perf_counter()
    try:
        runs = [r for r in cat.runs.values() if "stage" not in r.metadata["start"]][-10:]
        assert len(runs) == 10
        t2 = time.perf_counter()
    finally:
        cat.close()
    return {"open_s": t1 - t0, "list_s": t2 - t1, "close_s": time.perf_counter() - t2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=300, help="scans to store (default 300)")
    p.add_argument("--derived", type=int, default=2, choices=range(len(STAGES) + 1),
                   help="runs derived from each scan (default 2)")  # fmt: skip
    p.add_argument("--repeat", type=int, default=5, help="timings of each (default 5)")
    p.add_argument("--keep", type=Path, help="data directory to store into / time again")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp) / "data"
        stored_s = None
        if not (folder / "catalog" / "catalog.db").exists():
            print(f"storing {args.runs} scans, {args.derived} derived runs each, in {folder}")
            stored_s = store(folder, args.runs, args.derived)
        cli = time_cli(folder, args.repeat)
        listing = time_listing(folder, args.repeat * 4)
        tiled = time_through_tiled(folder)
    result = {
        "runs": args.runs,
        "derived_per_scan": args.derived,
        "store_s": stored_s,
        "cli_median_s": statistics.median(cli),
        "cli_max_s": max(cli),
        "listing_median_ms": statistics.median(listing) * 1e3,
        "through_tiled": tiled,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
