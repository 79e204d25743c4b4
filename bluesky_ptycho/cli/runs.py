"""The latest scans and replays in the catalog, with a header line.

Each line is a scan (a run the RunEngine made) or a replay (the runs one
``bluesky-ptycho replay`` derived, as one entry: its reconstruction's uid,
the scan it processed). The runs the stages derive live belong to their scan
and are not listed. Reads the embedded catalog's database directly, read-only:
quick, and it works while another process has the catalog open.
"""

from __future__ import annotations

import argparse

from bluesky_ptycho.cli import options

NAME = "runs"
HELP = "the latest scans and replays in the catalog"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=10, help="how many (default 10)")
    options.catalog(p)


def run(args: argparse.Namespace) -> int:
    from bluesky_ptycho.storage.listing import NoCatalog, format_runs, latest_runs

    if not 1 <= args.n <= 10**6:
        raise ValueError(f"runs -n {args.n}: give a number of runs from 1 to 1000000")
    try:
        entries = latest_runs(args.n, uri=args.catalog, api_key=args.api_key)
    except NoCatalog as err:  # nothing stored yet: an empty list, and why
        print(format_runs([]))
        print(f"({err})")
        return 0
    print(format_runs(entries))
    if not entries:
        print("(no runs yet: `bluesky-ptycho demo` or a scan in the profile stores one)")
    return 0
