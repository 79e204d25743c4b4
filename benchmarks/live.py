"""Benchmark: does the live reconstruction keep up with the frames? Lag at 10 and 50 Hz.

Run with ``make bench-remote`` (after remote.py) or ``python benchmarks/live.py``. A
simulated scan of 128² frames (``--side``² points, raster, 100 nm steps, 1e6 photons) is
handed frame by frame, at each rate, by a publishing thread to the streaming
reconstruction (rPIE, batch 32, a snapshot every 0.5 s, 10 final iterations), NumPy on
this machine's cores (CuPy too where a GPU is seen, adding 100 Hz). Per frame, the lag is
the time from its arrival to the first snapshot that includes it; the table gives its
median, 95th percentile and maximum over the scan and over its last quarter (a lag that
grows means the reconstruction falls behind), the time from the last frame to the final
image, the iterations run and the object error. Prints and writes ``live-<host>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np

from bluesky_ptycho.callbacks.streaming import StreamingReconstruction
from bluesky_ptycho.core import metrics, ptycho, sim, solvers
from bluesky_ptycho.core.arrays import backend
from bluesky_ptycho.core.geometry import ZonePlate

HERE = Path(__file__).parent


def one_rate(scan, rate_hz: float, xp, final_iterations: int = 10) -> dict:
    n = len(scan.intensities)
    p = sim.fzp_probe(scan.geometry, ZonePlate(defocus_m=12e-6))
    probe = ptycho.probe_from_counts(p, scan.intensities.sum((1, 2)).mean())
    solver = solvers.RPIE(
        scan.positions_px,
        scan.grid.shape,
        xp.asarray(probe),
        solvers.RpieOptions(batch_size=32),
    )
    arrivals = np.zeros(n)
    snaps: list[tuple[float, int]] = []
    stream = StreamingReconstruction(
        solver,
        snapshot_interval=0.5,
        final_iterations=final_iterations,
        min_frames=16,
        on_snapshot=lambda s: snaps.append((time.perf_counter(), s.newest)),
    )
    frames = [xp.asarray(scan.intensities[k : k + 1]) for k in range(n)]
    t0 = time.perf_counter()

    def publish() -> None:  # the "beamline": a frame every 1/rate s
        for k in range(n):
            due = t0 + k / rate_hz
            time.sleep(max(0.0, due - time.perf_counter()))
            arrivals[k] = time.perf_counter()
            stream.add_frames([k], frames[k])

    load0 = os.getloadavg()[0]
    cpu0 = time.process_time()
    sender = threading.Thread(target=publish, name="publisher")
    sender.start()
    sender.join()
    last = time.perf_counter()
    stream.finish()
    final = stream.wait()
    done = time.perf_counter()
    times = np.array([t for t, _ in snaps])
    newest = np.array([k for _, k in snaps])
    lags = np.full(n, np.nan)
    for k in range(n):
        j = np.flatnonzero(newest >= k + 1)
        if len(j):
            lags[k] = times[j[0]] - arrivals[k]
    tail = lags[3 * n // 4 :]
    region = metrics.illuminated_region(solver.illumination(), 0.3)
    err = metrics.object_error(solver.object, xp.asarray(scan.object), region)
    return {
        "backend": xp.__name__,
        "rate_hz": rate_hz,
        "frames": n,
        "frame_px": int(scan.intensities.shape[-1]),
        "scan_s": round(last - t0, 2),
        "snapshots": len(snaps),
        "lag_s_median": round(float(np.nanmedian(lags)), 3),
        "lag_s_p95": round(float(np.nanpercentile(lags, 95)), 3),
        "lag_s_max": round(float(np.nanmax(lags)), 3),
        "lag_s_p95_last_quarter": round(float(np.nanpercentile(tail, 95)), 3),
        "final_image_after_last_frame_s": round(done - last, 2),
        "iterations": None if final is None else final.iteration,
        "final_iterations": final_iterations,
        "object_error": round(float(err), 3),
        "cpu_s_per_s": round((time.process_time() - cpu0) / (done - t0), 2),
        "load_avg": round(load0, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=30, help="raster side: side² frames")
    ap.add_argument("--rates", type=float, nargs="+", default=[10.0, 50.0])
    args = ap.parse_args()
    scan = sim.simulate_scan(n_side=args.side, frame_px=128, photons=1e6, step_m=100e-9)
    cases = [(np, r) for r in args.rates]
    try:
        cp = backend("gpu")
        cases += [(cp, r) for r in (*args.rates, 100.0)]
    except RuntimeError as err:
        print(f"GPU: not measured ({err})")
    rows = []
    for xp, rate in cases:
        r = one_rate(scan, rate, xp)
        rows.append(r)
        print(
            f"live: {r['backend']}, {r['rate_hz']:g} Hz, {r['frames']} × {r['frame_px']}²: "
            f"lag median {r['lag_s_median']} s, p95 {r['lag_s_p95']} s (last quarter "
            f"{r['lag_s_p95_last_quarter']} s), max {r['lag_s_max']} s; final image "
            f"{r['final_image_after_last_frame_s']} s after the last frame; {r['iterations']} "
            f"iterations, object error {r['object_error']}; {r['cpu_s_per_s']} cores busy; "
            f"load average {r['load_avg']}",
            flush=True,
        )
    out = HERE / f"live-{platform.node() or 'host'}.json"
    out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                               "rows": rows}, indent=1))  # fmt: skip
    print(f"written: {out}")


if __name__ == "__main__":
    main()
