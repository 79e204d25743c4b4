"""Benchmarks: frame cleaning and reconstruction throughput, NumPy and (where present) CuPy.

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

from bluesky_ptycho.core import clean, fccd, ptycho, sim
from bluesky_ptycho.core.dark import RunningDarkStats
from bluesky_ptycho.core.geometry import Geometry, ZonePlate


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


def bench_cleaning(xp, raws, dark, settings, batch, repeats=3):
    """Frames per second cleaning raw (1152, 1940) uint16 into 128² float32."""
    r = xp.asarray(raws[:batch])
    dm, bad = xp.asarray(dark.mean), xp.asarray(dark.bad)
    center = (960.0, 480.0)
    clean.clean_frames(r, dm, bad, center, settings)  # warm-up
    _sync(xp)
    t0 = time.perf_counter()
    for _ in range(repeats):
        clean.clean_frames(r, dm, bad, center, settings)
    _sync(xp)
    return repeats * batch / (time.perf_counter() - t0)


def bench_epoch(xp, n_points=400, epochs=3):
    """Seconds per ePIE epoch over n_points frames of 128²."""
    g = Geometry()
    pos_m = sim.fermat_positions(n_points, 100e-9)
    grid = ptycho.object_grid(pos_m, g.object_pixel_size_m, g.frame_px)
    frames = np.random.default_rng(0).poisson(20, (n_points, 128, 128)).astype(np.float32)
    s = ptycho.StreamingEpie(xp.asarray(grid.to_pixels(pos_m)), grid.shape,
                             xp.asarray(sim.fzp_probe(g, ZonePlate())))
    s.add_frames(np.arange(n_points), xp.asarray(frames))
    s.iterate(1)
    _sync(xp)
    t0 = time.perf_counter()
    s.iterate(epochs)
    _sync(xp)
    return (time.perf_counter() - t0) / epochs


def main() -> int:
    g = Geometry()
    rng = np.random.default_rng(0)
    noise = sim.FCCDNoiseModel.for_energy(g.energy_ev)
    stats = RunningDarkStats(fccd.RAW_SHAPE, np)
    for _ in range(5):
        stats.update(noise.raw_frame(rng))
    dark = stats.result()
    sample = sim.SimulatedSample(g, ZonePlate(), scan_extent_m=2e-6)
    pattern = sample.intensity((0.0, 0.0), 1e6)
    raws = np.stack([noise.raw_frame(rng, pattern) for _ in range(16)])
    settings = clean.CleanSettings(adu_per_photon=noise.adu_per_photon)
    machine = f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    rows = []
    for name, xp in _backends():
        fps = bench_cleaning(xp, raws, dark, settings, batch=16 if xp is not np else 8)
        epoch = bench_epoch(xp)
        rows.append({"backend": name, "clean_frames_per_s": fps, "epie_s_per_epoch_400x128": epoch,
                     "epie_frames_per_s": 400 / epoch})
    print(f"machine: {machine}; python {sys.version.split()[0]}; numpy {np.__version__}")
    print(f"{'backend':8} {'clean fps':>10} {'ePIE s/epoch':>13} {'ePIE frame-updates/s':>21}")
    for r in rows:
        print(f"{r['backend']:8} {r['clean_frames_per_s']:10.1f} {r['epie_s_per_epoch_400x128']:13.3f} "
              f"{r['epie_frames_per_s']:21.0f}")
    out = Path(__file__).with_name(f"results-{platform.node() or 'host'}.json")
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
