"""Over Channel Access: the scan rate with the EPICS devices against the simulated ones, and
the object error when the frames are placed at the stage's readbacks against the planned
positions.

Starts ``bluesky-ptycho ioc`` on a free port of 127.0.0.1, then, in one run:

1. **rate**: ``ptycho_scan`` of N points (acquisition only: RunEngine, no pipeline) with
   the simulated devices, then with the EPICS devices over CA; frames/s of each.
2. **readbacks vs planned**: one ``ptycho_scan`` with the EPICS devices (the IOC's motors
   stop off target by a settling error and jitter) and the default pipeline, which places
   each frame at the readbacks its event carries; then the same documents again through a
   second pipeline with the readbacks taken out of the events, so it falls back to the
   planned positions. Object error of each against the simulated truth.

``python benchmarks/epics.py [--points 400] [--rate-points 100] [--rounds 3]``; prints and
writes it as JSON next to this file (``epics-<host>.json``).
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
from pathlib import Path

import numpy as np


def _rate(RE, fccd, stage, shutter, n: int) -> float:  # type: ignore[no-untyped-def]
    from bluesky_ptycho.acquisition.plans import ptycho_scan

    t0 = time.perf_counter()
    RE(ptycho_scan(fccd, stage, shutter, num_points=n, num_darks=1))
    return (n + 1) / (time.perf_counter() - t0)


def _error(result, geometry) -> float:  # type: ignore[no-untyped-def]
    from bluesky_ptycho.core.geometry import ZonePlate
    from bluesky_ptycho.core.metrics import illuminated_region, object_error
    from bluesky_ptycho.core.sim import SimulatedSample

    truth = SimulatedSample(geometry=geometry, zone_plate=ZonePlate()).object_on(result.grid)
    return object_error(result.object, truth, illuminated_region(result.illumination, 0.3))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=400)
    p.add_argument("--rate-points", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="alternating rate rounds")
    p.add_argument("--rate-only", action="store_true", help="skip the readbacks-vs-planned part")
    p.add_argument("--settle-sigma", type=float, default=0.03, help="µm")
    p.add_argument("--jitter-sigma", type=float, default=0.015, help="µm")
    args = p.parse_args()

    from bluesky_ptycho.apps.ioc import free_ca_port, local_ca_environment

    port = free_ca_port()
    env = local_ca_environment(port)
    os.environ.update(env)  # before the first Channel Access client starts
    tmp = Path(tempfile.mkdtemp(prefix="bench-epics-"))
    log = (tmp / "ioc.log").open("w")
    ioc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("bluesky-ptycho")),
            "ioc",
            "--settle-sigma",
            str(args.settle_sigma),
            "--jitter-sigma",
            str(args.jitter_sigma),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    try:
        deadline = time.monotonic() + 60
        while "Server startup complete" not in (tmp / "ioc.log").read_text():
            if ioc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp / "ioc.log").read_text())
            time.sleep(0.1)
        return _run(args, tmp)
    finally:
        os.kill(ioc.pid, signal.SIGTERM)
        ioc.wait(20)


def _run(args: argparse.Namespace, tmp: Path) -> int:
    from bluesky import RunEngine

    from bluesky_ptycho.acquisition.plans import ptycho_scan
    from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD
    from bluesky_ptycho.devices.epics import epics_devices
    from bluesky_ptycho.pipeline.runner import Pipeline

    out: dict = {
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs), {platform.platform()}",
        "points": args.points,
        "settle_sigma_um": args.settle_sigma,
        "jitter_sigma_um": args.jitter_sigma,
    }
    RE = RunEngine({})
    stage, shutter = SampleStage(name="stage"), Shutter(name="shutter")
    sim = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=tmp / "sim")
    efccd, estage, eshutter = epics_devices(write_path=tmp / "epics", connect_timeout=30)
    (tmp / "epics").mkdir(exist_ok=True)
    # 1. rate, side by side: warm-up, then alternating rounds (the machine is shared: the
    # median of the per-round ratios is what to compare)
    _rate(RE, sim, stage, shutter, 5)
    _rate(RE, efccd, estage, eshutter, 5)
    rounds = []
    for _ in range(args.rounds):
        a = _rate(RE, sim, stage, shutter, args.rate_points)
        b = _rate(RE, efccd, estage, eshutter, args.rate_points)
        rounds.append((a, b, b / a))
        print(
            f"rate: simulated {a:.2f} frames/s, over CA {b:.2f} frames/s ({b / a:.2f})", flush=True
        )
    r = np.asarray(rounds)
    out["rate_rounds"] = r.tolist()
    out["sim_frames_per_s"] = float(np.median(r[:, 0]))
    out["epics_frames_per_s"] = float(np.median(r[:, 1]))
    out["rate_ratio_epics_over_sim"] = float(np.median(r[:, 2]))
    print(
        f"rate (median of {args.rounds}): simulated {out['sim_frames_per_s']:.2f} frames/s, over "
        f"CA {out['epics_frames_per_s']:.2f} frames/s (ratio {out['rate_ratio_epics_over_sim']:.2f})",
        flush=True,
    )
    if args.rate_only:
        return _write(out)

    # 2. readbacks vs planned positions, on the same frames
    docs: list = []
    live = Pipeline()
    RE2 = RunEngine({})
    RE2.subscribe(lambda n, d: docs.append((n, d)))
    RE2.subscribe(live)
    (uid,) = RE2(ptycho_scan(efccd, estage, eshutter, num_points=args.points, num_darks=25))
    measured = live.wait(uid, timeout=1800)["reconstruction"].result
    start = next(d for n, d in docs if n == "start")
    md = start["ptycho"]
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    events = [d for n, d in docs if n == "event" and streams[d["descriptor"]] == "primary"]
    readback = np.array([[e["data"]["stage_x"], e["data"]["stage_y"]] for e in events]) * 1e-6
    planned = np.asarray(md["positions_m"])
    dev = np.linalg.norm(readback - planned, axis=1)
    out["readback_minus_planned_nm"] = {
        "rms": float(np.sqrt((dev**2).mean()) * 1e9),
        "max": float(dev.max() * 1e9),
    }
    stripped = []
    for name, doc in docs:
        if name == "event" and streams[doc["descriptor"]] == "primary":
            doc = {
                **doc,
                "data": {k: v for k, v in doc["data"].items() if k not in ("stage_x", "stage_y")},
            }
        stripped.append((name, doc))
    again = Pipeline()
    for name, doc in stripped:
        again(name, doc)
    planned_run = again.wait(uid, timeout=1800)
    planned_result = planned_run["reconstruction"].result
    from bluesky_ptycho.core.geometry import Geometry

    g = Geometry.from_metadata(md)
    out["object_error_readbacks"] = _error(measured, g)
    out["object_error_planned"] = _error(planned_result, g)
    out["planned_fallback_frames"] = planned_run["reconstruction"].planned_fallback
    print(
        f"positions: readback − planned {out['readback_minus_planned_nm']['rms']:.1f} nm rms; "
        f"object error at the readbacks {out['object_error_readbacks']:.3f}, at the planned "
        f"positions {out['object_error_planned']:.3f}",
        flush=True,
    )
    return _write(out)


def _write(out: dict) -> int:
    path = Path(__file__).with_name(f"epics-{platform.node()}.json")
    path.write_text(json.dumps(out, indent=1))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
