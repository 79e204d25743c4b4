"""Clean the raw frames of one scan into a CXI file: dark statistics, the nine FCCD steps, a
probe estimate in source_1/illumination. The demo writes scan_<id>.json next to its CXI file,
naming the frame files and the metadata."""

from __future__ import annotations

import argparse
from pathlib import Path

from bluesky_ptycho.cli import options

NAME = "raw2cxi"
HELP = "raw FCCD frames (HDF5 of the device) → cleaned CXI file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "frames",
        type=Path,
        nargs="?",
        metavar="FRAMES",
        help="HDF5 file of the data frames, as the FCCD device writes it (/entry/data/data; "
        "default: the one --scan names)",
    )
    p.add_argument(
        "--darks",
        type=Path,
        metavar="FILE",
        help="HDF5 file of the dark frames (default: the one --scan names; none: the overscan "
        "fit alone removes the offsets)",
    )
    p.add_argument(
        "--metadata",
        type=Path,
        metavar="FILE",
        help="the scan's start document as JSON, its 'ptycho' block in SI units (default: "
        "--scan's)",
    )
    p.add_argument(
        "--scan",
        type=Path,
        metavar="FILE",
        help="a scan_<id>.json written by the demo: frames, darks and metadata in one "
        "(default: none; give FRAMES and --metadata)",
    )
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="CXI file to write"
    )
    options.device(p, default="cpu")
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        metavar="N",
        help="frames cleaned together: more is faster, fewer holds less memory; "
        "frame_cleaning.batch_size (default: %(default)s)",
    )
    options.assignments(
        p,
        example="frame_cleaning.threshold_adu=12",
        what="a parameter of the stages raw2cxi runs (dark_statistics, frame_cleaning, stxm)",
    )
    options.quiet(p)


def run(args: argparse.Namespace) -> int:
    from bluesky_ptycho.apps.raw2cxi import load_metadata, raw_to_cxi, scan_files
    from bluesky_ptycho.pipeline.assignments import (
        bare_keys,
        check_assignments,
        stage_assignments,
    )
    from bluesky_ptycho.pipeline.files import RAW2CXI, load_pipeline

    old = bare_keys(args.set)
    if old:
        options.deprecated(
            "raw2cxi",
            " ".join(f"--set {p}" for p in old),
            " ".join(f"--set frame_cleaning.{p}" for p in old),
        )
    params = stage_assignments(args.set, bare="frame_cleaning")
    check_assignments(params, load_pipeline(RAW2CXI))
    frames, darks, meta = args.frames, args.darks, args.metadata
    if args.scan is not None:
        f, d = scan_files(args.scan)
        frames, darks, meta = frames or f, darks or d, meta or args.scan
    if frames is None or meta is None:
        raise ValueError("give FRAMES and --metadata (and --darks), or --scan SCAN.json")
    md = load_metadata(meta)
    res = raw_to_cxi(
        frames,
        darks,
        md,
        args.output,
        device=args.device,
        batch_size=args.batch_size,
        params=params,
        progress=not args.quiet,
    )
    print(
        f"{res.n_frames} frames ({res.n_darks} darks) cleaned in {res.seconds:.1f} s "
        f"({res.frames_per_second:.0f} frames/s); {res.n_written} written to {res.path}"
    )
    if res.n_planned_positions:
        print(
            f"{res.n_planned_positions} frames had no recorded stage readback: written at "
            "their planned positions"
        )
    if res.flags:
        print(
            f"{len(res.flags)} flagged and left out: "
            + "; ".join(f"{k}: {v}" for k, v in list(res.flags.items())[:10])
        )
    return 0
