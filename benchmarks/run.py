"""Benchmarks: FCCD frame cleaning throughput, NumPy and (where present) CuPy (solvers: solvers.py).

Run with ``make bench`` (or ``python benchmarks/run.py``). Prints a table and
writes it as JSON next to this file (``results-<host>.json``); the figures go
into docs/benchmarks.md with the machine they ran on. Each case is timed side
by side in the same run, after one warm-up batch.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from bluesky_ptycho.core import clean, fccd, sim
from bluesky_ptycho.core.dark import RunningDarkStats
from bluesky_ptycho.core.geometry import Beamstop, Geometry, ZonePlate


def _backends():
    out = [("numpy", np)]
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            out.append(("cupy", cupy))
    except Exception:
        pass
    return out


def _sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


def bench_cleaning(xp, raws, dark, settings, batch, repeats=3, threads=1):
    """Frames per second cleaning raw (1152, 1940) uint16 frames (host memory) with all nine steps.

    With *threads* > 1, each thread cleans its own batches with its own Preprocessor
    (NumPy and SciPy release the GIL in their loops).
    """
    from concurrent.futures import ThreadPoolExecutor

    pres = [clean.Preprocessor(dark, settings, xp) for _ in range(threads)]
    for p in pres:
        p(raws[:batch])  # warm-up: finds the centre, plans the FFTs
    _sync(xp)

    def work(p):
        for _ in range(repeats):
            p(raws[:batch])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, pres))
    _sync(xp)
    return threads * repeats * batch / (time.perf_counter() - t0)


def bench_cleaning_on_device(xp, raws, dark, settings, batch, repeats=10):
    """As :func:`bench_cleaning` with the raw frames already in device memory."""
    pre = clean.Preprocessor(dark, settings, xp)
    r = xp.asarray(raws[:batch])
    pre(r)
    _sync(xp)
    t0 = time.perf_counter()
    for _ in range(repeats):
        pre(r)
    _sync(xp)
    return repeats * batch / (time.perf_counter() - t0)


def _one_core():
    """Pin this process to one core and one FFT worker; returns how to undo it."""
    from bluesky_ptycho.core import arrays as _array

    cpus, workers = os.sched_getaffinity(0), _array._WORKERS
    os.sched_setaffinity(0, {min(cpus)})
    _array._WORKERS = 1

    def undo():
        os.sched_setaffinity(0, cpus)
        _array._WORKERS = workers

    return undo


def main() -> int:
    g = Geometry()
    rng = np.random.default_rng(0)
    bs = Beamstop((975.0, 463.0), 40.0, 0.05)
    noise = sim.FCCDNoiseModel.for_energy(g.energy_ev, defects=sim.FCCDDefects(), beamstop=bs)
    stats = RunningDarkStats(fccd.RAW_SHAPE, np)
    for _ in range(10):
        stats.update(noise.raw_frame(rng))
    dark = stats.result()
    sample = sim.SimulatedSample(g, ZonePlate(), scan_extent_m=2e-6)
    pattern = sample.intensity((0.0, 0.0), 1e6)
    raws = np.stack([noise.raw_frame(rng, pattern, (972, 466)) for _ in range(32)])
    machine = (
        f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    rows = []
    for name, xp in _backends():
        for frame_px in (256, 128):
            settings = clean.CleanSettings(
                adu_per_photon=noise.adu_per_photon, beamstop=bs, crop_px=512, frame_px=frame_px
            )
            row = {"backend": name, "out_px": frame_px}
            if xp is np:
                undo = _one_core()
                try:
                    row["clean_fps_1core"] = bench_cleaning(xp, raws, dark, settings, batch=16)
                finally:
                    undo()
                row["clean_fps_2threads"] = bench_cleaning(
                    xp, raws, dark, settings, batch=16, threads=2
                )
            else:
                row["clean_fps_host_input"] = bench_cleaning(xp, raws, dark, settings, batch=32)
                row["clean_fps_device_input"] = bench_cleaning_on_device(
                    xp, raws, dark, settings, batch=32
                )
            rows.append(row)
    print(f"machine: {machine}; python {sys.version.split()[0]}; numpy {np.__version__}")
    print("cleaning: full raw FCCD frames (1152 × 1940 uint16, all nine steps, crop 512) → out_px²")
    for r in rows:
        print(
            "  "
            + ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
            )
        )
    out = Path(__file__).with_name(f"results-{platform.node() or 'host'}.json")
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
