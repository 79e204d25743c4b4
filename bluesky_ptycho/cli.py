"""The ``bluesky-ptycho`` command."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bluesky-ptycho", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="simulated scan with live reconstruction, end to end")
    demo.add_argument("--points", type=int, default=400, help="scan points (default 400)")
    demo.add_argument("--pattern", choices=("fermat", "raster"), default="fermat")
    demo.add_argument("--step", type=float, default=100e-9, help="step between points in m")
    demo.add_argument("--darks", type=int, default=25, help="dark frames (default 25)")
    demo.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="array backend")
    demo.add_argument("--final-iterations", type=int, default=40, help="iterations after the last frame")
    demo.add_argument("--output", type=Path, default=Path("out/demo"), help="output folder")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    r2c = sub.add_parser(
        "raw2cxi", help="raw FCCD frames (HDF5 of the device) → cleaned CXI file",
        description="Clean the raw frames of one scan into a CXI file: dark statistics, the "
        "nine FCCD steps, a probe estimate in source_1/illumination. The demo writes "
        "scan_<id>.json next to its CXI file, naming the frame files and the metadata.",
    )
    r2c.add_argument("frames", type=Path, nargs="?", help="HDF5 file of the data frames")
    r2c.add_argument("--darks", type=Path, help="HDF5 file of the dark frames")
    r2c.add_argument("--metadata", type=Path,
                     help="the scan's start document as JSON (its 'ptycho' block is used)")
    r2c.add_argument("--scan", type=Path,
                     help="a scan_<id>.json written by the demo: frames, darks and metadata")
    r2c.add_argument("-o", "--output", type=Path, required=True, help="CXI file to write")
    r2c.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    r2c.add_argument("--batch-size", type=int, default=16)
    r2c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a cleaning setting, e.g. --set threshold_adu=12 (repeatable)")
    r2c.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = {"demo": _demo, "raw2cxi": _raw2cxi}[args.command]
    try:
        return command(args)
    except (ValueError, RuntimeError) as err:
        print(f"bluesky-ptycho {args.command}: {err}", file=sys.stderr)
        return 2


def _settings(pairs: list[str]) -> dict:
    import json

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: write KEY=VALUE, e.g. --set threshold_adu=12")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _raw2cxi(args: argparse.Namespace) -> int:
    import json

    from .raw2cxi import load_metadata, raw_to_cxi

    frames, darks, meta = args.frames, args.darks, args.metadata
    if args.scan is not None:
        scan = json.loads(args.scan.read_text())
        files = scan.get("files", {})
        frames = frames or Path(files["primary"])
        darks = darks or (Path(files["dark"]) if files.get("dark") else None)
        meta = meta or args.scan
    if frames is None or meta is None:
        raise ValueError("give FRAMES and --metadata (and --darks), or --scan SCAN.json")
    md = load_metadata(meta)
    res = raw_to_cxi(frames, darks, md, args.output, device=args.device,
                     batch_size=args.batch_size, settings=_settings(args.set),
                     progress=not args.quiet)
    print(f"{res.n_frames} frames ({res.n_darks} darks) cleaned in {res.seconds:.1f} s "
          f"({res.frames_per_second:.0f} frames/s); {res.n_written} written to {res.path}")
    if res.flags:
        print(f"{len(res.flags)} flagged and left out: "
              + "; ".join(f"{k}: {v}" for k, v in list(res.flags.items())[:10]))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .core._array import backend

    backend(args.device)  # says clearly when CuPy or a GPU is missing
    from .demo import run_demo

    t0 = time.perf_counter()
    result = run_demo(
        num_points=args.points,
        pattern=args.pattern,
        step=args.step,
        num_darks=args.darks,
        device=args.device,
        final_iterations=args.final_iterations,
        output=args.output,
        progress=not args.quiet,
    )
    wall = time.perf_counter() - t0
    print(
        f"scan: {result.num_points} points + {result.num_darks} darks in {result.scan_seconds:.1f} s; "
        f"final image {result.after_scan_seconds:.1f} s after the scan ({wall:.1f} s in all)"
    )
    print(
        f"reconstruction: {result.iterations} iterations, data error {result.data_error:.4g}, "
        f"object error {result.object_error:.3f} against the simulated truth "
        "(global phase and scale removed, illuminated region)"
    )
    if result.flags:
        print(f"flagged frames: {result.flags}")
    print(f"CXI:    {result.cxi_path}")
    print(f"figure: {result.figure_path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
