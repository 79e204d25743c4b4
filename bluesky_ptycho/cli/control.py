"""Abort, clear or reset the back-end's pipeline, or set stage parameters (checked against
their declared ranges before anything changes)."""

from __future__ import annotations

import argparse

from bluesky_ptycho.cli import options

NAME = "control"
HELP = "abort, clear or reset the back-end's pipeline, or set stage parameters"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=("abort", "clear", "reset", "set"),
        help="abort: stop the runs in progress; clear: forget the finished runs; reset: both, "
        "and the parameters back to the pipeline file's; set: change parameters (--set)",
    )
    options.assignments(p)
    options.back_end(p)


def run(args: argparse.Namespace) -> int:
    from bluesky_ptycho.pipeline.assignments import stage_assignments
    from bluesky_ptycho.transport.control import request

    if args.action != "set":
        reply = request(args.action, args.control, args.keys)
        print({k: v for k, v in reply.items() if k != "ok"} or "done")
        return 0
    if not args.set:
        raise ValueError("control set: give --set STAGE.KEY=VALUE")
    for stage, params in stage_assignments(args.set).items():
        reply = request("set", args.control, args.keys, stage=stage, params=params)
        for name, how in reply["applied"].items():
            print(f"{stage}.{name}: {how}")
    return 0
