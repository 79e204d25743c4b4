"""Receive a RunEngine's documents (``bluesky_ptycho.transport.publisher.Publisher``) and run
the pipeline on them; stages with ``where = "dask"`` spread over Dask workers. Stops on Ctrl-C
or SIGTERM.

The terminal gets one line when it starts and stops, a line when a run begins and one when
it is done (frames, flags, iterations, data error, resolution, CXI file), and warnings;
``-v`` adds every run's detail (what its log file holds), ``-vv`` the debug messages too."""

from __future__ import annotations

import argparse
from pathlib import Path

from bluesky_ptycho.cli import options

NAME = "serve"
HELP = "the back-end: run a pipeline on documents published over ZeroMQ"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from bluesky_ptycho.transport import DEFAULT_CONTROL_PORT, DEFAULT_DATA_PORT, DEFAULT_HOST
    from bluesky_ptycho.transport.snapshots import DEFAULT_SNAPSHOT_PORT

    p.add_argument(
        "pipeline_file",
        type=Path,
        nargs="?",
        help="pipeline file (default: the package's backend.toml, frame cleaning on Dask)",
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"interface to bind (default {DEFAULT_HOST}; any other needs --keys)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_DATA_PORT, help="documents in")
    p.add_argument(
        "--control-port", type=int, default=DEFAULT_CONTROL_PORT, help="commands and status"
    )
    p.add_argument(
        "--snapshot-port",
        type=int,
        default=DEFAULT_SNAPSHOT_PORT,
        help="PUB socket the stages' results go out on, for viewers and feedback "
        "(default %(default)s)",
    )
    options.keys(p)
    p.add_argument("--workers", type=int, help="Dask workers to start (default: one per core)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="use a running Dask scheduler")
    p.add_argument(
        "--slurm",
        action="append",
        metavar="KEY=VALUE",
        help="start the workers as SLURM jobs (dask-jobqueue SLURMCluster settings, e.g. "
        "--slurm queue=gpu --slurm walltime=02:00:00)",
    )
    p.add_argument(
        "--max-backlog",
        type=int,
        default=64,
        help="documents and frames the raw-frame stages hold before reading pauses",
    )
    p.add_argument(
        "--max-in-flight", type=int, default=32, help="frames out on the Dask workers at once"
    )
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=64.0,
        help="larger messages are rejected (default 64)",
    )
    p.add_argument(
        "--max-open-runs", type=int, default=4, help="runs open at once; a start beyond is refused"
    )
    p.add_argument(
        "--run-idle-timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="close a run that receives nothing for S seconds (its stages stop with "
        "exit_status 'fail'; default %(default)s)",
    )
    p.add_argument(
        "--data-root",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="frames may be read from files under DIR too (repeatable); by default only from "
        "the catalog's raw folder (<data dir>/raw)",
    )
    options.device(p)
    p.add_argument("--output", type=Path, help="CXI files (default <data dir>/cxi)")
    options.catalog(p, optional=True)
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: every run's detail on the terminal (what its log file holds); -vv: debug "
        "messages too (default: a line per run begun and done, and warnings)",
    )


def run(args: argparse.Namespace) -> int:
    import logging
    import signal

    from bluesky_ptycho.io.frames import confine_reads
    from bluesky_ptycho.pipeline.assignments import parse_assignments
    from bluesky_ptycho.pipeline.dask import connect, shutdown
    from bluesky_ptycho.pipeline.files import BACKEND, load_pipeline
    from bluesky_ptycho.pipeline.runner import Pipeline
    from bluesky_ptycho.storage.logs import console
    from bluesky_ptycho.storage.paths import data_dir, log_dir
    from bluesky_ptycho.transport.server import Server

    verbosity = getattr(args, "verbose", 0)
    console(
        logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity else logging.WARNING,
        summaries=True,
    )
    spec = load_pipeline(args.pipeline_file or BACKEND)
    roots = [data_dir() / "raw", *args.data_root]
    for root in args.data_root:
        if not root.is_dir():
            raise ValueError(f"--data-root {root}: no such folder")
    slurm = parse_assignments(args.slurm, "--slurm") if args.slurm else None
    needs_dask = any(s.where == "dask" for s in spec.stages.values())
    client = connect(args.scheduler, args.workers, slurm) if needs_dask else None
    catalog = options.open_catalog(args)
    if catalog is not None:
        roots.append(catalog.raw_dir)
    confine_reads(roots)
    pipe = Pipeline(
        spec,
        device=args.device,
        output_dir=args.output or data_dir() / "cxi",
        log_dir=log_dir(),
        client=client,
        max_in_flight=args.max_in_flight,
    )
    try:
        server = Server(
            pipe,
            args.host,
            args.port,
            args.control_port,
            args.keys,
            catalog,
            args.max_backlog,
            int(args.max_message_mb * 2**20),
            args.snapshot_port,
            max_open_runs=args.max_open_runs,
            run_idle_timeout=args.run_idle_timeout,
        )
    except Exception:
        pipe.close()
        if client is not None:
            shutdown(client)
        raise
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())
    workers = pipe.status()["workers"]
    dask = f", {workers['n']} Dask worker(s) at {workers['scheduler']}" if workers else ""
    results = server.snapshots.address if server.snapshots is not None else "not published"
    print(
        f"serving {spec.source}: documents {server.address}, control "
        f"{server.control_address}, results {results}{dask}; frames read from "
        f"{', '.join(map(str, roots))} only",
        flush=True,
    )
    try:
        server.serve()
    finally:
        pipe.close()
        server.close()
        if catalog is not None:
            catalog.close()
        if client is not None:
            shutdown(client)
    return 0
