"""The ``bluesky-ptycho`` command."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .catalog import Catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bluesky-ptycho", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="simulated scan with live reconstruction, end to end")
    demo.add_argument("--points", type=int, default=400, help="scan points (default 400)")
    demo.add_argument("--pattern", choices=("fermat", "raster"), default="fermat")
    demo.add_argument("--step", type=float, default=100e-9, help="step between points in m")
    demo.add_argument("--darks", type=int, default=25, help="dark frames (default 25)")
    demo.add_argument("--device", choices=("cpu", "gpu"), help="array backend (default: the pipeline file's)")
    demo.add_argument("--final-iterations", type=int, help="iterations after the last frame "
                      "(default: the pipeline file's)")
    demo.add_argument("--output", type=Path, default=Path("out/demo"), help="output folder")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    _pipeline_args(demo)
    _catalog_args(demo)
    demo.add_argument("--no-catalog", action="store_true", help="store nothing in a catalog")
    stages = sub.add_parser("stages", help="the installed stages: inputs, outputs, parameters")
    stages.add_argument("names", nargs="*", help="only these stages")
    check = sub.add_parser("check", help="validate a pipeline file without running anything")
    check.add_argument("pipeline_file", type=Path)
    rep_ = sub.add_parser(
        "replay", help="process a stored run again through a pipeline (new derived runs)",
        description="Stream a run stored in the catalog through a pipeline, with other "
        "parameters if asked; the derived runs are stored next to the live ones.",
    )
    rep_.add_argument("run", help="uid (or its start), or scan id, of a stored raw run")
    rep_.add_argument("--device", choices=("cpu", "gpu"))
    rep_.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                      help="change a parameter, e.g. --set reconstruction.algorithm=lsqml")
    rep_.add_argument("--output", type=Path, help="also write a CXI file here")
    rep_.add_argument("--quiet", action="store_true", help="no progress bar")
    _pipeline_args(rep_)
    _catalog_args(rep_)
    runs = sub.add_parser("runs", help="the latest runs in the catalog")
    runs.add_argument("-n", type=int, default=10, help="how many (default 10)")
    _catalog_args(runs)
    logs = sub.add_parser("logs", help="print a run's log (the latest by default)")
    logs.add_argument("run", nargs="?", help="uid (or its start) or scan id")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing what is added, and each new run's log")
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
    rec = sub.add_parser(
        "reconstruct", help="reconstruct a CXI 1.6 ptychography file (probe and object out)",
        description="Read frames, translations, geometry and (if present) a probe guess from "
        "a CXI file, reconstruct, and write the probe to entry_1/image_1/data and the object "
        "to entry_1/image_2/data (the layout ptychodus reads).",
    )
    rec.add_argument("input", type=Path, help="CXI file to read")
    rec.add_argument("-o", "--output", type=Path, required=True, help="CXI file to write")
    rec.add_argument("--algorithm", default="rpie",
                     choices=("rpie", "epie", "dm", "raar", "lsqml"), help="solver (default rpie)")
    rec.add_argument("--iterations", type=int, default=100, help="iterations (default 100)")
    rec.add_argument("--modes", type=int, default=1, help="incoherent probe modes (default 1)")
    rec.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    rec.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a solver option, e.g. --set batch_size=32 (repeatable)")
    rec.add_argument("--defocus", type=float, default=0.0, metavar="M",
                     help="sample distance from the focus in m, for the probe estimated from the "
                     "mean pattern when the file has no probe guess")
    rec.add_argument("--mpi", action="store_true",
                     help="split the scan over the MPI ranks (run as mpirun -n K bluesky-ptycho "
                     "reconstruct --mpi ...): k-means regions with overlap, object merged every "
                     "iteration")
    rec.add_argument("--frc", action="store_true",
                     help="also reconstruct the even and odd frames apart and report their FRC")
    rec.add_argument("--quiet", action="store_true", help="no progress bar")
    _remote_parsers(sub)
    args = parser.parse_args(argv)
    from .logs import console

    console(logging.INFO if args.command == "serve" else logging.WARNING)
    command = {
        "demo": _demo, "raw2cxi": _raw2cxi, "reconstruct": _reconstruct, "stages": _stages,
        "check": _check, "replay": _replay, "runs": _runs, "logs": _logs, "serve": _serve,
        "status": _status, "control": _control, "keys": _keys,
    }[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, OSError, LookupError) as err:
        print(f"bluesky-ptycho {args.command}: {err}", file=sys.stderr)
        return 2


def _remote_parsers(sub: Any) -> None:
    from .transport import DEFAULT_CONTROL_PORT, DEFAULT_DATA_PORT, DEFAULT_HOST, address
    from .transport.snapshots import DEFAULT_SNAPSHOT_PORT

    control = address(DEFAULT_HOST, DEFAULT_CONTROL_PORT)
    srv = sub.add_parser(
        "serve", help="the back-end: run a pipeline on documents published over ZeroMQ",
        description="Receive a RunEngine's documents (bluesky_ptycho.transport.Publisher) and "
        "run the pipeline on them; stages with where = \"dask\" spread over Dask workers. "
        "Stops on Ctrl-C or SIGTERM.",
    )
    srv.add_argument("pipeline_file", type=Path, nargs="?",
                     help="pipeline file (default: the package's backend.toml, frame cleaning "
                     "on Dask)")
    srv.add_argument("--host", default=DEFAULT_HOST,
                     help=f"interface to bind (default {DEFAULT_HOST}; any other needs --keys)")
    srv.add_argument("--port", type=int, default=DEFAULT_DATA_PORT, help="documents in")
    srv.add_argument("--control-port", type=int, default=DEFAULT_CONTROL_PORT,
                     help="commands and status")
    srv.add_argument("--snapshot-port", type=int, default=DEFAULT_SNAPSHOT_PORT,
                     help="PUB socket the stages' results go out on, for viewers and feedback "
                     "(default %(default)s)")
    srv.add_argument("--keys", type=Path, help="CURVE key folder (bluesky-ptycho keys)")
    srv.add_argument("--workers", type=int, help="Dask workers to start (default: one per core)")
    srv.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="use a running Dask scheduler")
    srv.add_argument("--slurm", action="append", metavar="KEY=VALUE",
                     help="start the workers as SLURM jobs (dask-jobqueue SLURMCluster "
                     "settings, e.g. --slurm queue=gpu --slurm walltime=02:00:00)")
    srv.add_argument("--max-backlog", type=int, default=64,
                     help="documents and frames the raw-frame stages hold before reading pauses")
    srv.add_argument("--max-in-flight", type=int, default=32,
                     help="frames out on the Dask workers at once")
    srv.add_argument("--max-message-mb", type=float, default=64.0,
                     help="larger messages are rejected (default 64)")
    srv.add_argument("--device", choices=("cpu", "gpu"))
    srv.add_argument("--output", type=Path, help="CXI files (default <data dir>/cxi)")
    _catalog_args(srv)
    srv.add_argument("--no-catalog", action="store_true", help="store nothing")
    st = sub.add_parser("status", help="the back-end's stages: frames in/out, backlog, rate, "
                        "errors, heartbeat")
    st.add_argument("--control", default=control, help=f"the back-end (default {control})")
    st.add_argument("--keys", type=Path, help="CURVE key folder")
    st.add_argument("--watch", type=float, metavar="S", help="print again every S seconds")
    st.add_argument("--json", action="store_true", help="the raw status as JSON")
    ctl = sub.add_parser("control", help="abort, clear or reset the back-end's pipeline, or "
                         "set stage parameters")
    ctl.add_argument("action", choices=("abort", "clear", "reset", "set"))
    ctl.add_argument("--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
                     help="with 'set': e.g. --set reconstruction.final_iterations=100")
    ctl.add_argument("--control", default=control, help=f"the back-end (default {control})")
    ctl.add_argument("--keys", type=Path, help="CURVE key folder")
    keys = sub.add_parser("keys", help="make CURVE keys for a back-end beyond localhost")
    keys.add_argument("folder", type=Path)


def _serve(args: argparse.Namespace) -> int:
    import signal

    from .callbacks.pipeline import Pipeline
    from .catalog import data_dir, log_dir
    from .pipelines import load_pipeline
    from .transport.server import Server
    from .transport.workers import connect, shutdown

    spec = load_pipeline(args.pipeline_file or Path(__file__).parent / "pipelines" / "backend.toml")
    slurm = _settings(args.slurm, "--slurm") if args.slurm else None
    needs_dask = any(s.where == "dask" for s in spec.stages.values())
    client = connect(args.scheduler, args.workers, slurm) if needs_dask else None
    catalog = None if args.no_catalog else _open_catalog(args)
    pipe = Pipeline(spec, device=args.device, output_dir=args.output or data_dir() / "cxi",
                    log_dir=log_dir(), client=client, max_in_flight=args.max_in_flight)
    try:
        server = Server(pipe, args.host, args.port, args.control_port, args.keys, catalog,
                        args.max_backlog, int(args.max_message_mb * 2**20), args.snapshot_port)
    except Exception:
        pipe.close()
        if client is not None:
            shutdown(client)
        raise
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())
    workers = pipe.status()["workers"]
    dask = f", {workers['n']} Dask worker(s) at {workers['scheduler']}" if workers else ""
    print(f"serving {spec.source}: documents {server.address}, control "
          f"{server.control_address}, results {server.snapshots.address}{dask}", flush=True)
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


def _status(args: argparse.Namespace) -> int:
    import json
    import time

    from .transport.control import format_status, request

    while True:
        status = request("status", args.control, args.keys)["status"]
        print(json.dumps(status, indent=1) if args.json else format_status(status), flush=True)
        if not args.watch:
            return 0
        time.sleep(args.watch)


def _control(args: argparse.Namespace) -> int:
    from .transport.control import request

    if args.action != "set":
        reply = request(args.action, args.control, args.keys)
        print({k: v for k, v in reply.items() if k != "ok"} or "done")
        return 0
    if not args.set:
        raise ValueError("control set: give --set STAGE.KEY=VALUE")
    for stage, params in _dotted(args.set).items():
        reply = request("set", args.control, args.keys, stage=stage, params=params)
        for name, how in reply["applied"].items():
            print(f"{stage}.{name}: {how}")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from .transport.security import generate_keys

    folder = generate_keys(args.folder)
    print(f"keys written to {folder}: give `serve --keys {folder}` on the back-end; a client "
          f"needs {folder}/client.key_secret and {folder}/server.key (Publisher(keys=FOLDER))")
    return 0


def _pipeline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", type=Path, metavar="FILE",
                   help="pipeline file (TOML; default: the package's default.toml)")


def _catalog_args(p: argparse.ArgumentParser) -> None:
    import os

    p.add_argument("--catalog", metavar="URI", default=os.environ.get("BLUESKY_PTYCHO_CATALOG"),
                   help="a Tiled server (default $BLUESKY_PTYCHO_CATALOG, else the embedded "
                   "on-disk catalog in $BLUESKY_PTYCHO_DATA or the user data directory)")
    p.add_argument("--api-key", default=os.environ.get("BLUESKY_PTYCHO_API_KEY"),
                   help="the Tiled server's API key (default $BLUESKY_PTYCHO_API_KEY)")


def _open_catalog(args: argparse.Namespace) -> Catalog:
    from .catalog import Catalog

    return Catalog(args.catalog, api_key=args.api_key)


def _stages(args: argparse.Namespace) -> int:
    from .plugins import available_stages, describe

    names = args.names or available_stages()
    print("\n\n".join(describe(n) for n in names))
    return 0


def _check(args: argparse.Namespace) -> int:
    from .pipelines import load_pipeline

    spec = load_pipeline(args.pipeline_file)
    chain = ", ".join(f"{k} ({s.stage}) ← {' + '.join(s.inputs)}" for k, s in spec.stages.items())
    print(f"{spec.source}: valid; device {spec.device}; {chain}")
    return 0


def _dotted(pairs: list[str]) -> dict:
    out: dict = {}
    for key, value in _settings(pairs).items():
        stage, dot, name = key.partition(".")
        if not dot:
            raise ValueError(f"--set {key}=...: write STAGE.KEY=VALUE, e.g. "
                             "--set reconstruction.final_iterations=100")
        out.setdefault(stage, {})[name] = value
    return out


def _replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .catalog import log_dir
    from .replay import replay

    cat = _open_catalog(args)
    try:
        start = cat[args.run].metadata["start"]
        n = start.get("ptycho", {}).get("num_points", 0) + start.get("ptycho", {}).get("num_darks", 0)
        bar = tqdm(total=n, unit="ev", desc="replay", disable=args.quiet)
        result = replay(start["uid"], cat, args.pipeline, _dotted(args.set), args.device,
                        args.output, log_dir(),
                        progress=lambda name: bar.update(name == "event"))
        bar.close()
        r = result.run.by_stage("reconstruction").result  # type: ignore[attr-defined]
        print(f"replayed run {result.source_uid} (scan {start.get('scan_id')}) in "
              f"{result.seconds:.1f} s" + (f": {r.iterations} iterations, data error "
                                            f"{r.errors[-1]:.4g}" if r is not None else ""))
        for key, uid in result.derived.items():
            print(f"  {key:<16} {uid}")
        print("stored in the catalog" if result.stored else
              "NOT yet stored: the catalog is unreachable; the documents wait in the spool")
    finally:
        cat.close()
    return 0


def _runs(args: argparse.Namespace) -> int:
    import datetime

    from tiled.queries import Key

    cat = _open_catalog(args)
    try:
        for run in cat.raw_runs(Key("start.ptycho.num_points") > 0)[-args.n:]:
            st = run.metadata["start"]
            stop = run.metadata.get("stop") or {}
            when = datetime.datetime.fromtimestamp(st["time"]).strftime("%Y-%m-%d %H:%M:%S")
            print(f"{st['uid']}  scan {st.get('scan_id', '-'):>4}  {when}  "
                  f"{st['ptycho'].get('num_points')} points  {stop.get('exit_status', 'running?')}")
    finally:
        cat.close()
    return 0


def _logs(args: argparse.Namespace) -> int:
    from .catalog import log_dir
    from .logs import find_log, follow

    folder = log_dir()
    path = find_log(folder, args.run)
    if args.follow:
        follow(folder, path)
    else:
        sys.stdout.write(path.read_text())
    return 0


def _settings(pairs: list[str], flag: str = "--set") -> dict:
    import json

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"{flag} {pair!r}: write KEY=VALUE, e.g. {flag} name=3")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _reconstruct(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .reconstruct_cxi import half_data_frc, reconstruct_cxi

    options = _settings(args.set)
    comm = None
    if args.mpi:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    lead = comm is None or comm.rank == 0
    bar = tqdm(total=args.iterations, unit="it", desc=args.algorithm,
               disable=args.quiet or not lead)

    def progress(iteration: int, error: float) -> None:
        bar.update(1)
        bar.set_postfix(error=f"{error:.4g}", refresh=False)

    try:
        result = reconstruct_cxi(
            args.input, args.output, args.algorithm, args.iterations, args.modes,
            args.device, options, progress, args.defocus, comm,
        )
    finally:
        bar.close()
    if not lead:
        return 0
    print(
        f"{result.algorithm}: {result.iterations} iterations in {result.seconds:.1f} s, "
        f"data error {result.errors[0]:.4g} → {result.errors[-1]:.4g}; "
        f"probe from {result.probe_source}; object pixel {result.object_pixel_size_m * 1e9:.3g} nm"
        + (f"; {result.ranks} MPI ranks" if result.ranks > 1 else "")
    )
    print(f"written: {result.output}")
    if args.frc:
        f = half_data_frc(args.input, args.algorithm, args.iterations, args.modes, args.device,
                          options, args.defocus)
        print(f"FRC of the even and odd halves: half-bit resolution {f.resolution_px:.2f} px "
              f"({f.resolution_px * result.object_pixel_size_m * 1e9:.3g} nm)")
    return 0


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

    if args.device is not None:
        backend(args.device)  # says clearly when CuPy or a GPU is missing
    from .catalog import log_dir
    from .demo import run_demo

    t0 = time.perf_counter()
    catalog = None if args.no_catalog else _open_catalog(args)
    try:
        result = run_demo(
            num_points=args.points,
            pattern=args.pattern,
            step=args.step,
            num_darks=args.darks,
            device=args.device,
            final_iterations=args.final_iterations,
            output=args.output,
            progress=not args.quiet,
            pipeline=args.pipeline,
            catalog=catalog,
            log_dir=log_dir(),
        )
    finally:
        if catalog is not None:
            catalog.close()
    wall = time.perf_counter() - t0
    print(
        f"scan: {result.num_points} points + {result.num_darks} darks in {result.scan_seconds:.1f} s; "
        f"final image {result.after_scan_seconds:.1f} s after the scan ({wall:.1f} s in all)"
    )
    print(
        f"reconstruction: {result.iterations} iterations, data error {result.data_error:.4g}, "
        f"object error {result.object_error:.3f} against the simulated truth "
        "(shift, phase ramp, global phase and scale removed; illuminated region)"
    )
    if result.flags:
        print(f"flagged frames: {result.flags}")
    print(f"CXI:    {result.cxi_path}")
    print(f"figure: {result.figure_path}")
    if catalog is not None:
        print(f"stored: run {result.uid} in the catalog at {catalog.location}"
              + ("" if result.stored else " (NOT yet: the catalog is unreachable; see the log)"))
        print(f"replay: bluesky-ptycho replay {result.uid[:8]} --set reconstruction.algorithm=lsqml")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
