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
    demo.add_argument("--final-epochs", type=int, default=40, help="epochs after the last frame")
    demo.add_argument("--output", type=Path, default=Path("out/demo"), help="output folder")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        try:
            return _demo(args)
        except (ValueError, RuntimeError) as err:
            print(f"bluesky-ptycho demo: {err}", file=sys.stderr)
            return 2
    return 1  # pragma: no cover


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
        final_epochs=args.final_epochs,
        output=args.output,
        progress=not args.quiet,
    )
    wall = time.perf_counter() - t0
    print(
        f"scan: {result.num_points} points + {result.num_darks} darks in {result.scan_seconds:.1f} s; "
        f"final image {result.after_scan_seconds:.1f} s after the scan ({wall:.1f} s in all)"
    )
    print(
        f"reconstruction: {result.epochs} epochs, data error {result.data_error:.4g}, "
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
