"""The hard cases (bluesky_ptycho.core.sim.hard) with our defaults and with pty-chi, side by side.

Each case is written as a CXI file (frames, reported positions, geometry and the
starting probe a user would have, in ``source_1/illumination``) with its truth
beside it. Ours: what ``bluesky-ptycho reconstruct FILE`` does with no options
(:func:`bluesky_ptycho.apps.reconstruct.prepare`, then iterations until the
convergence stop), the object error measured after every iteration outside the
timed part. pty-chi: LSQML, 50 epochs, batch 64, on the same frames, the same
object grid and starting probe (with as many modes as the case's source needs),
its own position correction on where the positions are not exact; its object is
copied out every 5 epochs (outside its timed part) for its error curve.

Run by benchmarks/solvers.py (``make bench-solvers``); alone:
``python benchmarks/hard_cases.py [CASE ...] [--keep DIR]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bluesky_ptycho.apps.reconstruct import prepare
from bluesky_ptycho.core import metrics
from bluesky_ptycho.core.ptycho import object_grid
from bluesky_ptycho.core.sim import hard
from bluesky_ptycho.core.solvers.setup import MARGIN_PX
from bluesky_ptycho.io.cxi import CxiData, read_cxi, write_cxi

HERE = Path(__file__).parent
PTYCHI_EPOCHS = 50
#: Seconds of iterating ours gets on a case before it is cut off (the stop usually comes first)
OURS_BUDGET_S = 600.0


def write_case(scan: hard.HardScan, folder: Path) -> Path:
    """The case as a user gets it: a CXI file; the truth in ``NAME.truth.npz`` beside it."""
    path = folder / f"{scan.case.name}.cxi"
    ps = scan.pixel_m
    write_cxi(
        path,
        CxiData(
            frames=scan.frames,
            translations_m=np.c_[scan.positions_m, np.zeros(len(scan.positions_m))],
            energy_ev=scan.energy_ev,
            distance_m=scan.distance_m,
            pixel_size_m=(ps, ps),
            illumination=scan.start_probe,
        ),
    )
    np.savez(
        folder / f"{scan.case.name}.truth.npz",
        object=scan.object,
        origin_m=np.asarray(scan.object_origin_m),
        pixel_m=scan.object_pixel_m,
        probe=scan.probe,
        true_positions_m=scan.true_positions_m,
        beam_dump=scan.bad,
    )
    return path


def _region(scan: hard.HardScan, grid, corners: np.ndarray) -> np.ndarray:
    """Where the true probe (all its source points) lights the object over 30 % of the maximum."""
    from bluesky_ptycho.core.ptycho import scatter_add, split_positions

    p2 = np.sum(np.abs(scan.probe) ** 2, axis=0).astype(np.float32)
    ill = np.zeros(grid.shape, np.float32)
    c, _ = split_positions(corners)
    scatter_add(ill, c, np.broadcast_to(p2, (len(c), *p2.shape)))
    return metrics.illuminated_region(ill, 0.3)


def ours(
    path: Path,
    scan: hard.HardScan,
    max_seconds: float = OURS_BUDGET_S,
    options: dict | None = None,
    algorithm: str = "rpie",
) -> dict:
    """Our defaults on the file: time and object error after every iteration until the stop."""
    data = read_cxi(path)
    solver, pixel, _origin = prepare(data, algorithm, source=str(path), options=options)
    grid = object_grid(data.translations_m[:, :2], pixel, data.frames.shape[-1], MARGIN_PX)
    truth = scan.truth_on(grid.shape, grid.origin_m)
    region = _region(scan, grid, grid.to_pixels(data.translations_m[:, :2]))
    stop = solver.convergence()
    spent, curve = 0.0, []
    while spent < max_seconds:
        t0 = time.perf_counter()
        solver.iterate(1)
        done = stop.update(solver)
        spent += time.perf_counter() - t0
        curve.append((spent, metrics.object_error(solver.object, truth, region)))
        if os.environ.get("HARD_VERBOSE"):
            print(
                f"    it {solver.iteration} t {spent:.1f} err {curve[-1][1]:.4f} "
                f"d {solver.changes[-1]:.2e} p {solver.probe_changes[-1]:.2e} "
                f"step {solver.step_scale} pos {solver.positions_from} rem {stop.remaining:.2e}"
            )
        if done:
            break
    return {
        "iterations": solver.iteration,
        "seconds": spent,
        "object_error": curve[-1][1],
        "curve": curve,
        "stopped_by": stop.reason,
        "object_restarted_at": solver.object_restarted_at,
        "frames_used": solver.n_measured,
        "keep": solver.weights > 0,
        "corners": grid.to_pixels(data.translations_m[:, :2]),
        "object_shape": grid.shape,
        "truth": truth,
        "region": region,
        "start_probe": data.illumination,
    }


def ptychi(path: Path, scan: hard.HardScan, mine: dict, threads: int = 2) -> dict | None:
    """pty-chi's LSQML on the same frames, grid and start; None when its venv is missing."""
    py = os.environ.get("PTYCHI_PYTHON", str(HERE.parent / ".venv-ptychi/bin/python"))
    if not Path(py).exists():
        print(f"pty-chi not found at {py}: run benchmarks/ptychi_env.sh (make bench-solvers does)")
        return None
    case = scan.case
    modes = 3 if case.source_points > 1 else 1
    probe = mine["start_probe"]
    if modes > 1:  # pty-chi is told the modes; ours finds them (or not) by itself
        from bluesky_ptycho.core.solvers.base import _initial_modes

        probe = _initial_modes(np.asarray(probe, np.complex64)[None], modes, 0.05, 0)
    refine = bool(case.encoder_px or case.random_px or case.drift_px)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(
            f"{tmp}/start.npz",
            probe=probe,
            corners=mine["corners"],
            object_shape=np.array(mine["object_shape"]),
            keep=mine["keep"],
            positions=int(refine),
            position_start=1,
            record_every=5,
        )
        subprocess.run(
            [py, str(HERE / "ptychi_lsqml.py"), str(path), f"{tmp}/start.npz",
             f"{tmp}/out.npz", str(PTYCHI_EPOCHS), str(threads)],
            check=True,
            stderr=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        res = np.load(f"{tmp}/out.npz")
        errs = [metrics.object_error(o, mine["truth"], mine["region"]) for o in res["objects"]]
        return {
            "epochs": PTYCHI_EPOCHS,
            "modes": modes,
            "position_correction": refine,
            "seconds": float(res["seconds"]),
            "object_error": metrics.object_error(res["object"], mine["truth"], mine["region"]),
            "curve": list(zip(res["times"].tolist(), errs, strict=True)),
        }


def run_case(name: str, folder: Path, with_ptychi: bool = True) -> dict:
    case = hard.CASES[name]
    t0 = time.perf_counter()
    scan = hard.simulate(case)
    path = write_case(scan, folder)
    row: dict = {"case": name, "what": case.what, "frames": len(scan.frames),
                 "frame_px": case.frame_px, "simulated_s": time.perf_counter() - t0}  # fmt: skip
    mine = ours(path, scan, float(os.environ.get("HARD_MAX_SECONDS", 600)))
    row["ours"] = {k: mine[k] for k in ("iterations", "seconds", "object_error", "curve",
                                       "stopped_by", "object_restarted_at",
                                       "frames_used")}  # fmt: skip
    for alg in os.environ.get("HARD_ALGORITHMS", "").split():  # others with their defaults
        m = ours(path, scan, float(os.environ.get("HARD_MAX_SECONDS", 600)), algorithm=alg)
        row[f"ours_{alg}"] = {k: m[k] for k in ("iterations", "seconds", "object_error",
                                               "stopped_by")}  # fmt: skip
    other = ptychi(path, scan, mine) if with_ptychi else None
    if other is not None:
        row["ptychi"] = other
        target = other["object_error"]
        reached = [t for t, e in mine["curve"] if e <= target]
        row["ours"]["seconds_to_ptychi_error"] = reached[0] if reached else None
        row["ours"]["fraction_of_ptychi_time"] = reached[0] / other["seconds"] if reached else None
    return row


def table(rows: list[dict]) -> str:
    """The Markdown table of docs/benchmarks.md."""
    out = [
        "| case | frames | ours: error | ours: iterations, s (stop) | pty-chi: error | "
        "pty-chi: s | ours to pty-chi's error: s | fraction of pty-chi's time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o, p = r["ours"], r.get("ptychi")
        frac = o.get("fraction_of_ptychi_time")
        out.append(
            f"| {r['case']} | {r['frames']} × {r['frame_px']}² | {o['object_error']:.4f} | "
            f"{o['iterations']}, {o['seconds']:.1f} "
            f"({o['stopped_by'] or f'no stop yet: the {OURS_BUDGET_S:.0f} s budget ran out'}"
            + (
                f"; object restarted at {o['object_restarted_at']}"
                if o.get("object_restarted_at") is not None
                else ""
            )
            + ") | "
            + (
                f"{p['object_error']:.4f} | {p['seconds']:.1f} | "
                f"{o['seconds_to_ptychi_error']:.1f} | {frac:.3f} |"
                if p is not None and frac is not None
                else (
                    f"{p['object_error']:.4f} | {p['seconds']:.1f} | not reached | — |"
                    if p is not None
                    else "— | — | — | — |"
                )
            )
        )
    return "\n".join(out)


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("--")] or list(hard.CASES)
    keep = argv[argv.index("--keep") + 1] if "--keep" in argv else None
    if keep in names:
        names.remove(keep)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in names:
            rows.append(run_case(name, folder, "--no-ptychi" not in argv))
            r = rows[-1]
            print(
                json.dumps({k: v for k, v in r.items() if k not in ("ours", "ptychi")}), flush=True
            )
            print("  ours", {k: v for k, v in r["ours"].items() if k != "curve"})
            print("  curve (s, error)", [(round(t, 1), round(e, 4)) for t, e in r["ours"]["curve"]])
            if "ptychi" in r:
                print(
                    "  pty-chi", {k: v for k, v in r["ptychi"].items() if k != "curve"}, flush=True
                )
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
