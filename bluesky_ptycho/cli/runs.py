"""The latest raw runs in the catalog."""

from __future__ import annotations

import argparse

from bluesky_ptycho.cli import options

NAME = "runs"
HELP = "the latest runs in the catalog"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=10, help="how many (default 10)")
    options.catalog(p)


def run(args: argparse.Namespace) -> int:
    import datetime

    from tiled.queries import Key

    if args.n < 1:
        raise ValueError(f"runs -n {args.n}: give a number of runs >= 1")
    cat = options.open_catalog(args)
    assert cat is not None
    try:
        for r in cat.raw_runs(Key("start.ptycho.num_points") > 0)[-args.n :]:
            st = r.metadata["start"]
            stop = r.metadata.get("stop") or {}
            when = datetime.datetime.fromtimestamp(st["time"]).strftime("%Y-%m-%d %H:%M:%S")
            print(
                f"{st['uid']}  scan {st.get('scan_id', '-'):>4}  {when}  "
                f"{st['ptycho'].get('num_points')} points  {stop.get('exit_status', 'running?')}"
            )
    finally:
        cat.close()
    return 0
