"""A simulated scan with live reconstruction, end to end, on the embedded defaults."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bluesky_ptycho.cli import options

NAME = "demo"
HELP = "simulated scan with live reconstruction, end to end"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--points", type=int, default=400, metavar="N", help="scan points (default: %(default)s)"
    )
    p.add_argument(
        "--pattern",
        choices=("fermat", "raster"),
        default="fermat",
        help="scan pattern: fermat (a Fermat spiral, no periodic grid artefacts) or raster "
        "(rows) (default: %(default)s)",
    )
    p.add_argument(
        "--step",
        type=float,
        default=100e-9,
        metavar="M",
        help="distance between neighbouring scan points, in metres (default: %(default)s m, "
        "100 nm)",
    )
    p.add_argument(
        "--darks",
        type=int,
        default=25,
        metavar="N",
        help="dark frames taken before the scan, shutter closed (default: %(default)s)",
    )
    options.device(p)
    p.add_argument(
        "--final-iterations",
        type=int,
        metavar="N",
        help="reconstruction iterations after the last frame (default: the pipeline file's "
        "reconstruction.final_iterations)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=Path("out/demo"),
        metavar="DIR",
        help="folder for the CXI file, the figure and scan_<id>.json, relative to the current "
        "directory (created if missing; default: %(default)s)",
    )
    options.quiet(p)
    options.pipeline(p)
    options.assignments(p, example="reconstruction.algorithm=lsqml")
    options.catalog(p, optional=True)
    p.add_argument(
        "--spool-wait",
        type=float,
        default=120.0,
        metavar="S",
        help="if the spool cannot be written or the frames' disk is full, the scan pauses "
        "and waits S seconds for space, then fails (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    from bluesky_ptycho.core.arrays import backend

    if args.device is not None:
        backend(args.device)  # says clearly when CuPy or a GPU is missing
    from bluesky_ptycho.apps.demo import run_demo
    from bluesky_ptycho.apps.progress import Progress
    from bluesky_ptycho.pipeline.assignments import check_assignments, stage_assignments
    from bluesky_ptycho.pipeline.files import load_pipeline
    from bluesky_ptycho.storage.paths import log_dir

    params = stage_assignments(args.set)
    check_assignments(params, load_pipeline(args.pipeline))
    t0 = time.perf_counter()
    progress = Progress(args.points) if not args.quiet else None
    if progress is not None and not getattr(args, "no_catalog", False):
        progress.phase("starting", "opening the catalog")
    catalog = options.open_catalog(args)
    try:
        result = run_demo(
            num_points=args.points,
            pattern=args.pattern,
            step=args.step,
            num_darks=args.darks,
            device=args.device,
            final_iterations=args.final_iterations,
            output=args.output,
            progress=progress or False,
            pipeline=args.pipeline,
            catalog=catalog,
            log_dir=log_dir(),
            spool_wait=args.spool_wait,
            params=params,
        )
    finally:
        if catalog is not None:
            catalog.close()
    wall = time.perf_counter() - t0
    print(
        f"scan: {result.num_points} points + {result.num_darks} darks in "
        f"{result.scan_seconds:.1f} s; final image {result.after_scan_seconds:.1f} s after the "
        f"scan ({wall:.1f} s in all)"
    )
    print(
        f"reconstruction: {result.iterations} iterations (final ones stopped: "
        f"{result.stop_reason}), data error {result.data_error:.4g}, "
        f"object error {result.object_error:.3f} against the simulated truth "
        "(shift, phase ramp, global phase and scale removed; illuminated region)"
    )
    print(
        f"resolution: {result.frc_resolution_nm:.3g} nm by the FRC of the even and odd frames' "
        f"reconstructions (half-bit threshold; object pixel {result.object_pixel_nm:.3g} nm), "
        "no truth needed"
    )
    if result.flags:
        print(f"flagged frames: {result.flags}")
    print(f"CXI:    {result.cxi_path}")
    print(f"figure: {result.figure_path}")
    print(f"log:    bluesky-ptycho logs {result.uid[:8]}")
    if catalog is None:
        return 0
    if not result.stored:
        print(
            f"NOT stored: run {result.uid} is not (yet) in the catalog at {catalog.location} "
            f"with every document read back; what was spooled waits in "
            f"{catalog.writer.spool_dir} and is written when a catalog is next opened there "
            "(see the log)"
        )
        return 1
    print(f"stored: run {result.uid} in the catalog at {catalog.location} (read back)")
    print(f"replay: bluesky-ptycho replay {result.uid[:8]} --set reconstruction.algorithm=lsqml")
    return 0
