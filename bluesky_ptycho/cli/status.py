"""The back-end's status: every run's stages (frames in/out and their rates, backlog, errors,
heartbeat), where each reconstruction stands (iteration, data error, frames used), and the
server's counters (documents received, duplicates, rejected messages by kind).

With ``--watch S`` it asks again every S seconds: on a terminal the table is redrawn in
place; into a file or a pipe a block is written, under a time stamp, only when something
in it changed."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from bluesky_ptycho.cli import options

NAME = "status"
HELP = "the back-end's stages: frames in/out, rates, backlog, errors, heartbeat, iterations"
#: on a terminal: cursor to the top left, then clear to the end of the screen
HOME_CLEAR = "\x1b[H\x1b[J"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.back_end(p)
    p.add_argument(
        "--watch",
        type=float,
        metavar="S",
        help="ask again every S seconds (on a terminal the table is redrawn in place; else "
        "a block is written when something changed; default: once)",
    )
    p.add_argument("--json", action="store_true", help="the raw status as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    import math
    import sys
    import time

    from bluesky_ptycho.transport.control import format_status, request

    if args.watch is not None and not (math.isfinite(args.watch) and args.watch > 0):
        raise ValueError(f"status --watch {args.watch}: give a number of seconds > 0")
    out = sys.stdout
    tty = out.isatty()
    shown = None
    while True:
        status = request("status", args.control, args.keys)["status"]
        text = json.dumps(status, indent=1) if args.json else format_status(status)
        if not args.watch:
            print(text, flush=True)
            return 0
        if tty:
            _redraw(out, text)
        else:
            seen = _what_changes(status)
            if seen != shown:
                stamp = time.strftime("%H:%M:%S")
                out.write(f"-- {stamp} {'-' * 60}\n{text}\n")
                out.flush()
            shown = seen
        time.sleep(args.watch)


def _redraw(out: TextIO, text: str) -> None:
    """Draw *text* over the previous one: from the top left, each line cleared to its end."""
    out.write(HOME_CLEAR + text.replace("\n", "\x1b[K\n") + "\x1b[K\n")
    out.flush()


def _what_changes(status: dict[str, Any]) -> Any:
    """The status without what changes at every poll whether or not anything happens (the
    time, the uptime, heartbeat ages, the count of control requests): when this is the same
    as at the last poll, there is nothing new to write."""
    server = dict(status.get("server", {}))
    server.pop("uptime", None)
    counters = dict(server.pop("counters", {}))
    counters.pop("control_requests", None)
    runs = {
        uid: {k: {n: v for n, v in s.items() if n != "heartbeat_age"}
              for k, s in run.get("stages", {}).items()}
        for uid, run in status.get("runs", {}).items()
    }  # fmt: skip
    return (repr(server), repr(counters), repr(runs), repr(status.get("workers")))
