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
    from bluesky_ptycho.transport import (
        DEFAULT_CONTROL_PORT,
        DEFAULT_DATA_PORT,
        DEFAULT_HOST,
        address,
    )
    from bluesky_ptycho.transport.snapshots import DEFAULT_SNAPSHOT_PORT

    options.pipeline(
        p, default="the package's backend.toml, frame cleaning on Dask", positional=True
    )
    options.assignments(p)
    p.add_argument(
        "--listen",
        type=options.endpoint,
        metavar="URL",
        default=address(DEFAULT_HOST, DEFAULT_DATA_PORT),
        help="where the documents come in (a Publisher connects here), tcp://HOST:PORT; a HOST "
        "other than localhost needs --keys (default: %(default)s)",
    )
    options.back_end(
        p,
        default=None,
        help="where commands and status are answered (status, control connect here), "
        f"tcp://HOST:PORT (default: --listen's host, port {DEFAULT_CONTROL_PORT})",
    )
    p.add_argument(
        "--results",
        type=options.endpoint,
        metavar="URL",
        help="where the stages' results go out (PUB socket, for viewers and feedback), "
        f"tcp://HOST:PORT (default: --listen's host, port {DEFAULT_SNAPSHOT_PORT})",
    )
    # the older spellings, hidden from --help; run() says what replaces them
    p.add_argument("--host", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--control-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--snapshot-port", type=int, help=argparse.SUPPRESS)
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="Dask worker processes to start, one thread each (default: one per core)",
    )
    p.add_argument(
        "--scheduler",
        metavar="URL",
        help="use the running Dask scheduler at tcp://HOST:PORT (default: start a local cluster "
        "of --workers)",
    )
    p.add_argument(
        "--slurm",
        action="append",
        metavar="KEY=VALUE",
        help="start the workers as SLURM jobs (dask-jobqueue SLURMCluster settings, e.g. "
        "--slurm queue=gpu --slurm walltime=02:00:00; repeatable; default: processes on this "
        "machine)",
    )
    p.add_argument(
        "--max-backlog",
        type=int,
        default=64,
        metavar="N",
        help="documents (frames, mostly) the raw-frame stages may hold unprocessed; beyond, "
        "the server stops reading and ZeroMQ, then the publisher's queue, hold the rest "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=32,
        metavar="N",
        help="frames sent to the Dask workers and not yet back, at most (default: %(default)s)",
    )
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=64.0,
        metavar="MB",
        help="a message larger than this many MiB is rejected (default: %(default)s)",
    )
    p.add_argument(
        "--max-open-runs",
        type=int,
        default=4,
        metavar="N",
        help="runs open at once; a start document beyond is refused (default: %(default)s)",
    )
    p.add_argument(
        "--run-idle-timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="close a run that receives nothing for S seconds (its stages stop with "
        "exit_status 'fail'; default: %(default)s)",
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
    p.add_argument(
        "--output",
        type=Path,
        metavar="DIR",
        help="folder for the CXI files (default: <data dir>/cxi; the data dir is "
        "$BLUESKY_PTYCHO_DATA or the user data directory)",
    )
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
    from bluesky_ptycho.pipeline.assignments import (
        check_assignments,
        parse_assignments,
        stage_assignments,
    )
    from bluesky_ptycho.pipeline.dask import connect, shutdown
    from bluesky_ptycho.pipeline.files import BACKEND, load_pipeline
    from bluesky_ptycho.pipeline.runner import Pipeline
    from bluesky_ptycho.storage.logs import console
    from bluesky_ptycho.storage.paths import data_dir, log_dir
    from bluesky_ptycho.transport.security import is_local
    from bluesky_ptycho.transport.server import Server

    verbosity = getattr(args, "verbose", 0)
    console(
        logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity else logging.WARNING,
        summaries=True,
    )
    host, port, control_port, results_port = addresses(args)
    params = stage_assignments(args.set)
    spec = load_pipeline(options.pipeline_file(args) or BACKEND)
    if params:
        check_assignments(params, spec)
        spec = spec.changed(params=params)
    if not is_local(host) and args.keys is None:
        raise ValueError(
            f"--listen {args.listen}: listening beyond this machine needs CURVE keys; make them "
            "with `bluesky-ptycho keys DIR` and give --keys DIR (clients need DIR/client.* "
            "and DIR/server.key)"
        )
    roots = [data_dir() / "raw", *args.data_root]
    for root in args.data_root:
        if not root.is_dir():
            raise ValueError(f"--data-root {root}: no such folder")
    slurm = parse_assignments(args.slurm, "--slurm") if args.slurm else None
    needs_dask = any(s.where == "dask" for s in spec.stages.values())
    # the catalog first: one another process holds stops serve before any worker starts
    catalog = options.open_catalog(args)
    if catalog is not None:
        roots.append(catalog.raw_dir)
    try:
        client = connect(args.scheduler, args.workers, slurm) if needs_dask else None
    except BaseException:
        if catalog is not None:
            catalog.close()
        raise
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
            host,
            port,
            control_port,
            args.keys,
            catalog,
            args.max_backlog,
            int(args.max_message_mb * 2**20),
            results_port,
            max_open_runs=args.max_open_runs,
            run_idle_timeout=args.run_idle_timeout,
        )
    except Exception:
        pipe.close()
        if client is not None:
            shutdown(client)
        if catalog is not None:
            catalog.close()
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


def addresses(args: argparse.Namespace) -> tuple[str, int, int, int]:
    """(host, documents port, control port, results port) from --listen, --control and
    --results, or from the older --host/--port/--control-port/--snapshot-port (with a note).

    The back-end binds one interface: the three addresses share --listen's host.
    """
    from bluesky_ptycho.transport import DEFAULT_CONTROL_PORT, address
    from bluesky_ptycho.transport.snapshots import DEFAULT_SNAPSHOT_PORT

    host, port = options.split_endpoint(args.listen)
    for flag in ("port", "control_port", "snapshot_port"):  # the older spellings: checked alike
        value = getattr(args, flag)
        if value is not None and not 1 <= value <= 65535:
            raise ValueError(
                f"--{flag.replace('_', '-')} {value}: give a port in 1..65535 (better, "
                f"the address: --listen/--control/--results tcp://HOST:PORT)"
            )
    if args.host is not None or args.port is not None:
        host = args.host if args.host is not None else host
        port = args.port if args.port is not None else port
        old = " ".join(
            f"--{k} {v}" for k, v in (("host", args.host), ("port", args.port)) if v is not None
        )
        options.deprecated("serve", old, f"--listen {address(host, port)}")
    ports = {}
    for name, old, default in (
        ("control", "control_port", DEFAULT_CONTROL_PORT),
        ("results", "snapshot_port", DEFAULT_SNAPSHOT_PORT),
    ):
        url, old_port = getattr(args, name), getattr(args, old)
        if url is not None and old_port is not None:
            raise ValueError(
                f"--{name} {url} and --{old.replace('_', '-')} {old_port}: give --{name} only"
            )
        if old_port is not None:
            options.deprecated(
                "serve",
                f"--{old.replace('_', '-')} {old_port}",
                f"--{name} {address(host, old_port)}",
            )
            url = address(host, old_port)
        there, ports[name] = options.split_endpoint(url) if url else (host, default)
        if there != host:
            raise ValueError(
                f"--{name} {url}: the back-end listens on one interface, --listen's host "
                f"{host!r}; give --{name} {address(host, ports[name])}"
            )
    return host, port, ports["control"], ports["results"]
