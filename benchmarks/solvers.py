"""Solver benchmarks: against pty-chi, the 1600-frame test of Daurer et al. 2017, iterations per second.

Run with ``make bench-solvers`` (``python benchmarks/solvers.py [CASE ...] [--skip-paper]
[--old]``).
Prints the figures and writes ``solvers-<host>.json`` next to this file; they go
into docs/benchmarks.md with the machine they ran on.

0. **The hard cases** (benchmarks/hard_cases.py): every case of
   :mod:`bluesky_ptycho.core.sim.hard` with our defaults (what ``bluesky-ptycho
   reconstruct FILE`` does) and with pty-chi's LSQML, side by side; the table
   is written to ``hard-cases-<host>.md`` next to this file.
1. (``--old``) **pty-chi** on our own simulator's data: the same CXI file
   (20 × 20 raster, 64² frames, 1e6 photons) and the same starting probe;
   pty-chi's LSQML runs 50 epochs on 2 threads in its own venv
   (``benchmarks/ptychi_env.sh`` builds it; ``PTYCHI_PYTHON`` names its
   python, default ``.venv-ptychi/bin/python``). Each of our solvers then
   iterates until its object error (shift, ramp, phase and scale removed)
   reaches pty-chi's; the wall time to get there is compared.
2. **The paper's test**: 1600 frames of 128² (40 × 40 raster) handed to the
   streaming reconstruction at 10 Hz; the time from the last frame to the
   final image, and how far the live image lags the newest frame.
3. **Iterations per second** of every solver on 1600 × 128², NumPy, and CuPy
   where a GPU is present (with the fraction of its memory bandwidth).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bluesky_ptycho.callbacks.streaming import StreamingReconstruction
from bluesky_ptycho.core import metrics, ptycho, sim, solvers
from bluesky_ptycho.core.geometry import ZonePlate
from bluesky_ptycho.io.cxi import CxiData, write_cxi

HERE = Path(__file__).parent


def _start_probe(scan):
    p = sim.fzp_probe(scan.geometry, ZonePlate(defocus_m=12e-6))
    return ptycho.probe_from_counts(p, scan.intensities.sum((1, 2)).mean())


def _error(solver, scan, region):
    return metrics.object_error(solver.object, solver.xp.asarray(scan.object), region)


def vs_ptychi(threads: int = 2) -> dict:
    py = os.environ.get("PTYCHI_PYTHON", str(HERE.parent / ".venv-ptychi/bin/python"))
    scan = sim.simulate_scan(n_side=20, frame_px=64, photons=1e6)
    probe = _start_probe(scan)
    out: dict = {"frames": len(scan.intensities), "frame_px": 64}
    with tempfile.TemporaryDirectory() as tmp:
        cxi = Path(tmp) / "scan.cxi"
        g = scan.geometry
        ps = g.frame_pixel_size_m
        write_cxi(
            cxi,
            CxiData(
                scan.intensities,
                np.c_[scan.positions_m, np.zeros(len(scan.positions_m))],
                g.energy_ev,
                g.distance_m,
                (ps, ps),
                illumination=probe,
            ),
        )
        np.savez(
            Path(tmp) / "start.npz",
            probe=probe,
            corners=scan.positions_px,
            object_shape=np.array(scan.grid.shape),
        )
        ref = solvers.RPIE(scan.positions_px, scan.grid.shape, probe)
        ref.add_frames(np.arange(len(scan.intensities)), scan.intensities)
        region = metrics.illuminated_region(ref.illumination(), 0.3)
        if Path(py).exists():
            subprocess.run(
                [
                    py,
                    str(HERE / "ptychi_lsqml.py"),
                    str(cxi),
                    f"{tmp}/start.npz",
                    f"{tmp}/ptychi.npz",
                    "50",
                    str(threads),
                ],
                check=True,
                stderr=subprocess.DEVNULL,
            )
            res = np.load(f"{tmp}/ptychi.npz")
            target = metrics.object_error(res["object"], scan.object, region)
            out["ptychi"] = {
                "epochs": 50,
                "seconds": float(res["seconds"]),
                "object_error": float(target),
            }
        else:
            print(f"pty-chi not found at {py}: run benchmarks/ptychi_env.sh; comparing to 0.07")
            target = 0.07
        rows = {}
        for alg in ("rpie", "lsqml", "raar", "dm"):
            s = solvers.solver_class(alg)(scan.positions_px, scan.grid.shape, probe)
            s.add_frames(np.arange(len(scan.intensities)), scan.intensities)
            spent, err = 0.0, 1.0
            while s.iteration < 300 and err > target:
                t0 = time.perf_counter()
                s.iterate(1)
                spent += time.perf_counter() - t0
                err = _error(s, scan, region)
            rows[alg] = {
                "iterations": s.iteration,
                "seconds": spent,
                "object_error": err,
                "reached": bool(err <= target),
            }
            if "ptychi" in out:
                rows[alg]["fraction_of_ptychi_time"] = spent / out["ptychi"]["seconds"]
        out["ours"] = rows
    return out


def paper_scale(rate_hz: float = 10.0, final_iterations: int = 50, more: int = 50) -> dict:
    """1600 × 128² at 10 Hz through the streaming reconstruction with the default options:
    the final iterations stop on convergence (at most *final_iterations*); then *more*
    iterations show what stopping cost."""
    scan = sim.simulate_scan(n_side=40, frame_px=128, photons=1e6, step_m=100e-9)
    n = len(scan.intensities)
    solver = solvers.RPIE(
        scan.positions_px, scan.grid.shape, _start_probe(scan), solvers.RpieOptions(batch_size=32)
    )
    arrivals = np.zeros(n)
    snaps: list[tuple[float, int]] = []
    final_at: list[float] = []

    def snap(s):
        snaps.append((time.perf_counter(), s.newest))
        if s.final:
            final_at.append(time.perf_counter())

    stream = StreamingReconstruction(
        solver,
        snapshot_interval=0.5,
        final_iterations=final_iterations,
        min_frames=16,
        on_snapshot=snap,
        frc_interval=0.0,
        final_frc=False,
    )
    t0 = time.perf_counter()
    for k in range(n):
        due = t0 + k / rate_hz
        time.sleep(max(0.0, due - time.perf_counter()))
        arrivals[k] = time.perf_counter()
        stream.add_frames([k], scan.intensities[k : k + 1])
    last = time.perf_counter()
    live = solver.iteration
    stream.finish()
    final = stream.wait()
    done = final_at[0] if final_at else time.perf_counter()
    lags = []
    for k in range(n):
        later = [t for t, newest in snaps if newest >= k + 1]
        if later:
            lags.append(later[0] - arrivals[k])
    region = metrics.illuminated_region(solver.illumination(), 0.3)
    err = _error(solver, scan, region)
    solver.iterate(more)
    return {
        "frames": n,
        "frame_px": 128,
        "rate_hz": rate_hz,
        "object": list(scan.grid.shape),
        "scan_seconds": last - t0,
        "final_after_last_frame_s": done - last,
        "iterations": final.iteration,
        "final_iterations_run": final.iteration - live,
        "final_iterations_cap": final_iterations,
        "stopped_by": stream.stop_reason,
        "live_lag_s_median": float(np.median(lags)),
        "live_lag_s_max": float(np.max(lags)),
        "object_error": err,
        f"object_error_after_{more}_more": _error(solver, scan, region),
    }


def paper_emulated(
    seconds_per_iteration: float = 2.45, snapshot_seconds: float = 1.04, more: int = 50
) -> dict:
    """The paper's test on a virtual clock, so that the final phase does not depend on this
    machine's speed or load: frames at 10 Hz; an iteration costs *seconds_per_iteration*
    times the share of the 1600 frames in, a snapshot's per-frame errors
    *snapshot_seconds* times that share every 0.5 s; the last frames come in after the
    last live iteration, as they do in a real scan. Then the final phase as
    StreamingReconstruction runs it (the convergence stop, ``anneal()`` at finish) and,
    from the same live phase run again (it is deterministic), without the anneal (the
    step lowered by ``step_adapt`` alone, as before the anneal was always asked)."""
    scan = sim.simulate_scan(n_side=40, frame_px=128, photons=1e6, step_m=100e-9)
    n = len(scan.intensities)

    def live() -> solvers.RPIE:
        s = solvers.RPIE(
            scan.positions_px, scan.grid.shape, _start_probe(scan),
            solvers.RpieOptions(batch_size=32),
        )  # fmt: skip
        t, k, snapped = 0.0, 0, -1.0
        while k < n:
            while k < n and k / 10.0 <= t:
                s.add_frames([k], scan.intensities[k : k + 1])
                k += 1
            if k == n:
                break  # the last frames: in, not yet iterated, when finish() comes
            if s.n_measured >= 16:
                s.iterate(1)
                t += 0.02 + seconds_per_iteration * s.n_measured / n
                if t - snapped >= 0.5:
                    t += snapshot_seconds * s.n_measured / n
                    snapped = t
            else:
                t = k / 10.0
        return s

    out: dict = {"seconds_per_iteration": seconds_per_iteration,
                 "snapshot_seconds": snapshot_seconds}  # fmt: skip
    for name, anneal in (("anneal", True), ("step_adapt_only", False)):
        s = live()
        region = metrics.illuminated_region(s.illumination(), 0.3)
        row = {"live_iterations": s.iteration, "object_error_at_finish": _error(s, scan, region)}
        stop = s.convergence().after(s)
        if anneal:
            s.anneal()
        final = 0
        while final < 50:
            s.iterate(1)
            final += 1
            if stop.update(s):
                break
        row.update(final_iterations=final, stopped_by=stop.reason,
                   object_error=_error(s, scan, region))  # fmt: skip
        s.iterate(more)
        row[f"object_error_after_{more}_more"] = _error(s, scan, region)
        out[name] = row
    return out


def iteration_rates(xp, n_side: int = 40, frame_px: int = 128) -> list[dict]:
    scan = sim.simulate_scan(n_side=n_side, frame_px=frame_px, photons=1e6)
    rows = []
    for alg in ("rpie", "lsqml", "raar", "dm"):
        s = solvers.solver_class(alg)(
            xp.asarray(scan.positions_px), scan.grid.shape, xp.asarray(_start_probe(scan))
        )
        s.add_frames(np.arange(len(scan.intensities)), xp.asarray(scan.intensities))
        s.iterate(1)
        _sync(xp)
        t0 = time.perf_counter()
        s.iterate(3)
        _sync(xp)
        dt = (time.perf_counter() - t0) / 3
        row = {
            "backend": xp.__name__,
            "algorithm": alg,
            "frames": len(scan.intensities),
            "frame_px": frame_px,
            "s_per_iteration": dt,
            "iterations_per_s": 1 / dt,
        }
        if xp is not np:
            # bytes an iteration must move at least: amplitudes read once, and
            # each complex view written and read by every FFT pass (≈ 8 passes)
            n = len(scan.intensities) * frame_px * frame_px
            moved = n * 4 + 8 * 2 * n * 8
            peak = _peak_bandwidth(xp)
            row["bandwidth_fraction"] = moved / dt / peak
        rows.append(row)
    return rows


def _plain(x):
    return x.tolist() if hasattr(x, "tolist") else str(x)


def _sync(xp):
    if xp is not np:
        xp.cuda.Device().synchronize()


def _peak_bandwidth(xp) -> float:
    props = xp.cuda.runtime.getDeviceProperties(0)
    return 2 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8


def main() -> int:
    machine = (
        f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    result: dict = {"machine": machine}
    import hard_cases

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    known = list(hard_cases.hard.CASES)
    ap.add_argument("cases", nargs="*", metavar="CASE",
                    help=f"hard cases to run (default: all of {', '.join(known)})")  # fmt: skip
    ap.add_argument("--skip-paper", action="store_true", help="leave out the paper's test")
    ap.add_argument("--paper-emulated", action="store_true",
                    help="only the paper's test on a virtual clock (the final phase with and "
                    "without the anneal, independent of this machine's speed); no hard cases")  # fmt: skip
    ap.add_argument("--old", action="store_true",
                    help="also the earlier comparison on our own simulator's data")  # fmt: skip
    args = ap.parse_args()
    unknown = [c for c in args.cases if c not in known]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    if args.paper_emulated:
        result["paper_emulated"] = paper_emulated()
        print(json.dumps(result["paper_emulated"], indent=1))
        return 0
    names = args.cases or known
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name in names:
            rows.append(hard_cases.run_case(name, Path(tmp)))
            r = rows[-1]
            print(name, {k: v for k, v in r["ours"].items() if k != "curve"}, flush=True)
            if "ptychi" in r:
                print("  pty-chi", {k: v for k, v in r["ptychi"].items() if k != "curve"},
                      flush=True)  # fmt: skip
    result["hard_cases"] = rows
    result["hard_cases_seconds"] = time.perf_counter() - t0
    table = hard_cases.table(rows)
    print(table)
    (HERE / f"hard-cases-{platform.node() or 'host'}.md").write_text(table + "\n")
    if args.old:  # the earlier comparison, on our own simulator's data
        result["vs_ptychi"] = vs_ptychi()
        print(json.dumps(result["vs_ptychi"], indent=1))
    if not args.skip_paper:
        result["paper_scale"] = paper_scale()
        print(json.dumps(result["paper_scale"], indent=1))
    rows = iteration_rates(np)
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            rows += iteration_rates(cupy) + iteration_rates(cupy, frame_px=256)
    except Exception:
        pass
    result["iteration_rates"] = rows
    for r in rows:
        print(
            "  "
            + ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
            )
        )
    out = HERE / f"solvers-{platform.node() or 'host'}.json"
    out.write_text(json.dumps(result, indent=2, default=_plain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
