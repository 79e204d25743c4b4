"""Serve the beamline's PVs from a soft IOC: the FCCD (areaDetector camera + HDF5 plugin),
the sample stage's two motor records and the shutter, over Channel Access."""

from __future__ import annotations

import argparse

NAME = "ioc"
HELP = "soft IOC over Channel Access: simulated FCCD (areaDetector), stage motors, shutter"


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give LOW,HIGH (e.g. -50,50)") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"{text!r}: LOW must be below HIGH")
    return lo, hi


def add_arguments(p: argparse.ArgumentParser) -> None:
    from bluesky_ptycho.apps.ioc import FCCD_PREFIX, SHUTTER_PV, STAGE_X_PV, STAGE_Y_PV, IocConfig

    d = IocConfig()
    p.add_argument("--fccd-prefix", default=FCCD_PREFIX, help="the FCCD's prefix (cam1:, HDF1:)")
    p.add_argument("--x-pv", default=STAGE_X_PV, help="the x motor record")
    p.add_argument("--y-pv", default=STAGE_Y_PV, help="the y motor record")
    p.add_argument("--shutter-pv", default=SHUTTER_PV, help="the shutter (readback: PV_RBV)")
    p.add_argument("--egu", default=d.egu, help="the motors' engineering units")
    p.add_argument(
        "--limits", type=_pair, default=d.limits, help="soft limits LOW,HIGH in EGU (HLM/LLM)"
    )
    p.add_argument(
        "--travel", type=_pair, default=d.travel, help="hardware travel LOW,HIGH (limit switches)"
    )
    p.add_argument("--velocity", type=float, default=d.velocity, help="motor speed, EGU/s")
    p.add_argument(
        "--settle-sigma",
        type=float,
        default=d.settle_sigma,
        help="settling error σ after a move (EGU)",
    )
    p.add_argument("--jitter-sigma", type=float, default=d.jitter_sigma, help="jitter σ (EGU)")
    p.add_argument("--jitter-tau", type=float, default=d.jitter_tau, help="jitter time scale (s)")
    p.add_argument(
        "--seed", type=int, default=d.seed, help="random seed of the jitter, settling and frames"
    )
    p.add_argument("--no-defects", action="store_true", help="an ideal camera (no FCCD defects)")
    p.add_argument(
        "--interfaces",
        nargs="*",
        help="addresses to serve on (all by default; EPICS_CAS_INTF_ADDR_LIST); the port is "
        "EPICS_CA_SERVER_PORT (5064)",
    )


def run(args: argparse.Namespace) -> int:
    import logging

    from bluesky_ptycho.apps.ioc import IocConfig, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for key in ("sigma", "velocity"):
        for name in ("settle_sigma", "jitter_sigma", "velocity"):
            if key in name and getattr(args, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 0")
    if args.velocity <= 0 or args.jitter_tau <= 0:
        raise ValueError("--velocity and --jitter-tau must be > 0")
    config = IocConfig(
        fccd_prefix=args.fccd_prefix,
        x_pv=args.x_pv,
        y_pv=args.y_pv,
        shutter_pv=args.shutter_pv,
        egu=args.egu,
        limits=args.limits,
        travel=args.travel,
        velocity=args.velocity,
        settle_sigma=args.settle_sigma,
        jitter_sigma=args.jitter_sigma,
        jitter_tau=args.jitter_tau,
        seed=args.seed,
        defects=not args.no_defects,
    )
    print(
        f"bluesky-ptycho ioc: {config.fccd_prefix}cam1:, {config.fccd_prefix}HDF1:, "
        f"{config.x_pv}, {config.y_pv}, {config.shutter_pv} (Ctrl-C stops)",
        flush=True,
    )
    serve(config, args.interfaces)
    return 0
