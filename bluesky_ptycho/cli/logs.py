"""Print a run's log (the latest by default), or follow it and each new run's."""

from __future__ import annotations

import argparse
import sys

NAME = "logs"
HELP = "print a run's log (the latest by default)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "run", nargs="?", help="scan id (a number), or uid (or its start) (default: the latest run)"
    )
    p.add_argument(
        "--uid", action="store_true", help="read RUN as a uid prefix even if it is all digits"
    )
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing what is added, and each new run's log",
    )


def run(args: argparse.Namespace) -> int:
    from bluesky_ptycho.storage.logs import find_log, follow
    from bluesky_ptycho.storage.paths import log_dir

    folder = log_dir()
    path = find_log(folder, args.run, uid=args.uid)
    if args.follow:
        follow(folder, path)
    else:
        sys.stdout.write(path.read_text())
    return 0
