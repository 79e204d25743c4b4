"""The installed stages: what each takes in, puts out, and its parameters."""

from __future__ import annotations

import argparse

NAME = "stages"
HELP = "the installed stages: inputs, outputs, parameters"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "names", nargs="*", metavar="STAGE", help="only these stages (default: every installed one)"
    )


def run(args: argparse.Namespace) -> int:
    from bluesky_ptycho.plugins import available_stages, describe

    names = args.names or available_stages()
    print("\n\n".join(describe(n) for n in names))
    return 0
