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
    from bluesky_ptycho.apps.progress import Progress
    from bluesky_ptycho.apps.replay import replay
    from bluesky_ptycho.pipeline.assignments import check_assignments, stage_assignments
    from bluesky_ptycho.pipeline.files import load_pipeline
    from bluesky_ptycho.storage.paths import log_dir

    params = stage_assignments(args.set)
    check_assignments(params, load_pipeline(args.pipeline))
    progress = None if args.quiet else Progress(0, "replay", count="cleaned")
    if progress is not None:
        progress.phase("starting", "opening the catalog")
    cat = options.open_catalog(args)
    assert cat is not None
    try:
        start = cat[args.run].metadata["start"]
        if progress is not None:
            progress.total = int(start.get("ptycho", {}).get("num_points", 0))
            progress.phase("starting", "building the pipeline")
        result = replay(
            start["uid"], cat, args.pipeline, params, args.device, args.output, log_dir(),
            progress=progress,
        )  # fmt: skip
        if progress is not None:
            progress.close()
        r = result.run.by_stage("reconstruction").result  # type: ignore[attr-defined]
        scan = start.get("scan_id")
        print(
            f"replayed run {result.source_uid} (scan {scan}) in {result.seconds:.1f} s"
            + (
                f": {r.iterations} iterations, data error {r.errors[-1]:.4g}"
                + (
                    f", resolution {r.frc_resolution_m * 1e9:.3g} nm"
                    if r.frc_resolution_m == r.frc_resolution_m
                    else ""
                )
                if r is not None
                else ""
            )
        )
        if result.log_path is not None:
            print(f"log:    {result.log_path}  (bluesky-ptycho logs {result.source_uid[:8]})")
        if result.cxi_path is not None:
            print(f"CXI:    {result.cxi_path}")
        stored = "in the catalog" if result.stored else "NOT yet stored (see below)"
        print(f"derived runs, {stored} at {cat.location}:")
        for key, uid in result.derived.items():
            print(f"  {key:<16} {uid}")
        example = result.derived.get("reconstruction") or next(iter(result.derived.values()), "")
        if example:
            print(f"in the profile: db['{example}'] (a derived run: its streams and metadata)")
        if not result.stored:
            print("NOT yet stored: the catalog is unreachable; the documents wait in the spool")
    finally:
        cat.close()
    return 0
