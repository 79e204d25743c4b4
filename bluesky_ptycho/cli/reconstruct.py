"""Read frames, translations, geometry and (if present) a probe guess from a CXI file,
reconstruct, and write the probe to entry_1/image_1/data and the object to
entry_1/image_2/data (the layout ptychodus reads)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bluesky_ptycho.cli import options

NAME = "reconstruct"
HELP = "reconstruct a CXI 1.6 ptychography file (probe and object out)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from bluesky_ptycho.core.solvers import ALGORITHMS

    p.add_argument("input", type=Path, metavar="FILE", help="CXI 1.6 file to read")
    p.add_argument(
        "-o", "--output", type=Path, required=True, metavar="FILE", help="CXI file to write"
    )
    p.add_argument(
        "--algorithm", default="rpie", choices=ALGORITHMS, help="solver (default: %(default)s)"
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=200,
        metavar="N",
        help="most iterations (default: %(default)s); iterating stops earlier once the object "
        "has converged (solver option stop_tolerance: the fraction of its norm still to go)",
    )
    p.add_argument(
        "--no-stop",
        action="store_true",
        help="run all --iterations, without the convergence stop",
    )
    p.add_argument(
        "--modes",
        type=int,
        default=1,
        metavar="N",
        help="incoherent probe modes (default: %(default)s)",
    )
    options.device(p, default="cpu")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a solver option, e.g. --option batch_size=32 (`bluesky-ptycho stages "
        "reconstruction` lists each solver's with range and unit; repeatable; default: the "
        "solver's defaults)",
    )
    # the older spelling of --option, hidden; run() says so
    p.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument(
        "--defocus",
        type=float,
        default=0.0,
        metavar="M",
        help="sample distance from the focus, in metres, for the probe estimated from the mean "
        "pattern when the file has no probe guess (default: %(default)s)",
    )
    p.add_argument(
        "--mpi",
        action="store_true",
        help="split the scan over the MPI ranks (run as mpirun -n K bluesky-ptycho reconstruct "
        "--mpi ...): k-means regions with overlap, object merged every iteration",
    )
    p.add_argument(
        "--frc",
        action="store_true",
        help="also reconstruct the even and odd frames apart and report their FRC",
    )
    options.quiet(p)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bluesky_ptycho.apps.reconstruct import half_data_frc, reconstruct_cxi
    from bluesky_ptycho.pipeline.assignments import parse_assignments

    if args.set:
        options.deprecated(
            "reconstruct",
            " ".join(f"--set {p}" for p in args.set),
            " ".join(f"--option {p}" for p in args.set) + " (--set names a pipeline stage's "
            "parameter elsewhere)",
        )
    settings = parse_assignments(args.option + args.set, "--option")
    comm = None
    if args.mpi:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    lead = comm is None or comm.rank == 0
    bar = tqdm(
        total=args.iterations, unit="it", desc=args.algorithm, disable=args.quiet or not lead
    )

    def progress(iteration: int, error: float) -> None:
        bar.update(1)
        bar.set_postfix(error=f"{error:.4g}", refresh=False)

    try:
        result = reconstruct_cxi(
            args.input, args.output, args.algorithm, args.iterations, args.modes, args.device,
            settings, progress, args.defocus, comm, not args.no_stop,
        )  # fmt: skip
    finally:
        bar.close()
    if not lead:
        return 0
    print(
        f"{result.algorithm}: {result.iterations} iterations in {result.seconds:.1f} s "
        f"(stopped: {result.stopped_by}), "
        f"data error {result.errors[0]:.4g} → {result.errors[-1]:.4g}; "
        f"probe from {result.probe_source}; object pixel {result.object_pixel_size_m * 1e9:.3g} nm"
        + (f"; {result.ranks} MPI ranks" if result.ranks > 1 else "")
        + (
            f"; the object restarted at iteration {result.object_restarted_at} (the probe had "
            "moved far from its start)"
            if result.object_restarted_at is not None
            else ""
        )
        + (f"; {result.left_out} frames with NaN/inf values left out" if result.left_out else "")
    )
    print(f"written: {result.output}")
    if args.frc:
        f = half_data_frc(
            args.input, args.algorithm, args.iterations, args.modes, args.device, settings,
            args.defocus,
        )  # fmt: skip
        print(
            f"FRC of the even and odd halves: half-bit resolution {f.resolution_px:.2f} px "
            f"({f.resolution_px * result.object_pixel_size_m * 1e9:.3g} nm)"
        )
    return 0
