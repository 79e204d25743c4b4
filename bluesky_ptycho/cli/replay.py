"""Stream a run stored in the catalog through a pipeline, with other parameters if asked;
the derived runs are stored next to the live ones."""

from __future__ import annotations

import argparse
from pathlib import Path

from bluesky_ptycho.cli import options

NAME = "replay"
HELP = "process a stored run again through a pipeline (new derived runs)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="uid (or its start), or scan id, of a stored raw run")
    options.device(p)
    options.assignments(p, example="reconstruction.algorithm=lsqml")
    p.add_argument(
        "--output", type=Path, metavar="FILE", help="also write a CXI file here (default: none)"
    )
    options.quiet(p)
    options.pipeline(p)
    options.catalog(p)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bluesky_ptycho.apps.replay import replay
    from bluesky_ptycho.pipeline.assignments import check_assignments, stage_assignments
    from bluesky_ptycho.pipeline.files import load_pipeline
    from bluesky_ptycho.storage.paths import log_dir

    params = stage_assignments(args.set)
    check_assignments(params, load_pipeline(args.pipeline))
    cat = options.open_catalog(args)
    assert cat is not None
    try:
        start = cat[args.run].metadata["start"]
        md = start.get("ptycho", {})
        bar = tqdm(total=md.get("num_points", 0) + md.get("num_darks", 0), unit="ev",
                   desc="replay", disable=args.quiet)  # fmt: skip
        result = replay(
            start["uid"], cat, args.pipeline, params, args.device, args.output, log_dir(),
            progress=lambda name: bar.update(name == "event"),
        )  # fmt: skip
        bar.close()
        r = result.run.by_stage("reconstruction").result  # type: ignore[attr-defined]
        print(
            f"replayed run {result.source_uid} (scan {start.get('scan_id')}) in "
            f"{result.seconds:.1f} s"
            + (
                f": {r.iterations} iterations, data error {r.errors[-1]:.4g}"
                if r is not None
                else ""
            )
        )
        for key, uid in result.derived.items():
            print(f"  {key:<16} {uid}")
        print(
            "stored in the catalog"
            if result.stored
            else "NOT yet stored: the catalog is unreachable; the documents wait in the spool"
        )
    finally:
        cat.close()
    return 0
