"""The back-end's status: every run's stages (frames in/out, backlog, rate, errors, heartbeat)
and the server's counters (documents received, duplicates, rejected messages by kind)."""

from __future__ import annotations

import argparse

from bluesky_ptycho.cli import options

NAME = "status"
HELP = "the back-end's stages: frames in/out, backlog, rate, errors, heartbeat"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.back_end(p)
    p.add_argument(
        "--watch", type=float, metavar="S", help="print again every S seconds (default: once)"
    )
    p.add_argument("--json", action="store_true", help="the raw status as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    import math
    import time

    from bluesky_ptycho.transport.control import format_status, request

    if args.watch is not None and not (math.isfinite(args.watch) and args.watch > 0):
        raise ValueError(f"status --watch {args.watch}: give a number of seconds > 0")
    while True:
        status = request("status", args.control, args.keys)["status"]
        print(json.dumps(status, indent=1) if args.json else format_status(status), flush=True)
        if not args.watch:
            return 0
        time.sleep(args.watch)
