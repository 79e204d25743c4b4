"""Benchmark: the remote back-end end to end — frames/s through ZeroMQ, `serve` and Dask.

Run with ``make bench-remote`` (``python benchmarks/remote.py --frames 10000``). It prints,
and writes to ``remote-<host>.json`` next to this file, everything the remote back-end's
section of docs/benchmarks.md records, from one run:

**Input.** A real scan of ``--distinct`` points (default 2,000) with 25 darks is recorded
once through the RunEngine with the simulated FCCD into a cache folder (``--cache``,
default ``benchmarks/.frames``, kept out of git; about 9 GB for 2,000 full raw frames; the
simulator draws every defect, ~65 ms a frame) and reused by later runs. Each case composes
a run of ``--frames`` primary events from it whose StreamDatum documents point at the
distinct frames in turn, and publishes it with the project's ``Publisher`` to
``bluesky-ptycho serve`` (dark statistics + frame cleaning into 256² on Dask workers,
frames read from the detector's file by the workers), timed from the start document to the
cleaning stage's last frame.

**Page cache or disk.** "cache": the frames file is read once before the case, so the
workers read from the page cache (its resident share is printed). "disk": the file's pages
are dropped before the case (``posix_fadvise(POSIX_FADV_DONTNEED)`` on the file: no root
needed, other users' cached files untouched) and, during the case, behind the cleaning (each
frame's byte range once the stage has emitted it), so every frame of every pass comes from
the disk.

**Figures per case.** frames/s; frames out, valid and flagged (zero lost: all N out; all
valid: no frame refused or unreadable); peak and final RSS of the back-end with its workers;
CPU per frame over the timed window only (not start-up): each worker process (user, system,
minor page faults), what the workers report for their calls (reading, cleaning), the
back-end's threads by name (receive loop, each stage, the result publisher, ZeroMQ's I/O,
the rest: Dask's client, scheduler and nannies), and the publishing thread; the load average.

**Bounds in the same run.** The cleaning kernel is timed in this process on one core over
frames of the cache ("kernel, alone"), and the workers' own cleaning CPU per frame during
the case ("kernel, in the run"); the cleaning bound is the cores times the kernel's rate
(what the cores could clean if cleaning were all they did), and each case's frames/s is
given as a fraction of it. CPU figures hold under load; frames/s does not: the load average
says how much of the machine the others took.

**Cases.** 2 workers from page cache and from disk (``--frames``); 1 worker; batch sizes
(``--batches``, ``--sweep-frames`` each); a worker killed by pid at a third of a run (zero
lost, the batch redone); and Dask's dispatch per call, measured alone: a task through the
scheduler (results relayed by it, Dask's default; or straight from the worker) against a
call to an actor, per call of a batch's size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import psutil
from event_model import compose_run

from bluesky_ptycho.transport import address
from bluesky_ptycho.transport.control import ControlError, request
from bluesky_ptycho.transport.publisher import Publisher

HERE = Path(__file__).parent
FRAME_BYTES = 1152 * 1940 * 2
TICK = os.sysconf("SC_CLK_TCK")

PIPELINE = """
[pipeline]
device = "cpu"
cxi = false

[stages.dark_statistics]
inputs = ["raw"]

[stages.frame_cleaning]
inputs = ["raw", "dark_statistics"]
where = "dask"
params = {{ batch_size = {batch}, frame_px = 256 }}
"""


# -- the input: distinct raw frames, recorded once -------------------------------------------
def frame_cache(folder: Path, distinct: int) -> dict:
    """The cache of a recorded *distinct*-point scan: its documents and frames file (made
    when missing)."""
    where = folder / f"scan-{distinct}"
    docs_file = where / "documents.json"
    if not docs_file.exists():
        need = distinct * FRAME_BYTES * 1.1 + 2e9
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < need:
            sys.exit(
                f"{folder}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed for {distinct} "
                "raw frames; give --cache on a larger disk or fewer --distinct"
            )
        if where.exists():
            shutil.rmtree(where)  # a recording that did not finish
        print(f"recording {distinct} raw frames into {where} (once; ~65 ms a frame)", flush=True)
        t0 = time.perf_counter()
        docs = record_scan(where / "raw", distinct)
        tmp = docs_file.with_suffix(".part")
        tmp.write_text(json.dumps(docs, default=_plain))
        tmp.rename(docs_file)
        print(f"recorded in {time.perf_counter() - t0:.0f} s", flush=True)
    docs = json.loads(docs_file.read_text())
    files = {s: _file_of(docs, s) for s in ("dark", "primary")}
    return {"folder": where, "docs": docs, "files": files,
            "offsets": _frame_offsets(files["primary"])}  # fmt: skip


def _file_of(docs: list, stream: str) -> Path:
    """The frames file of *stream* in a recorded run's documents."""
    from bluesky_ptycho.io.frames import checked_path

    streams = {d["uid"]: d["name"] for name, d in docs if name == "descriptor"}
    uris = {d["uid"]: d["uri"] for name, d in docs if name == "stream_resource"}
    datum = next(d for name, d in docs if name == "stream_datum"
                 and streams[d["descriptor"]] == stream)  # fmt: skip
    return checked_path(uris[datum["stream_resource"]])


def record_scan(folder: Path, n: int) -> list:
    """A real *n*-point Fermat scan (50 nm steps) with 25 darks: its documents (frames in
    HDF5 in *folder*)."""
    from bluesky import RunEngine

    from bluesky_ptycho.acquisition.plans import ptycho_scan
    from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD

    RE = RunEngine({})
    docs: list = []
    RE.subscribe(lambda name, d: docs.append((name, d)))
    stage, shutter = SampleStage(name="stage"), Shutter(name="shutter")
    fccd = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=folder)
    # 50 nm steps: 2,000 Fermat points stay on the simulated sample (±1.5 µm)
    RE(ptycho_scan(fccd, stage, shutter, num_points=n, step=50e-9, num_darks=25))
    return docs


def _plain(o):
    if isinstance(o, np.generic | np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} in a document")


def _frame_offsets(path: Path) -> list[int]:
    """Byte offset in the file of each frame (one chunk a frame)."""
    import h5py

    with h5py.File(path, "r") as f:
        ds = f["/entry/data/data"]
        return [ds.id.get_chunk_info(i).byte_offset for i in range(ds.id.get_num_chunks())]


def long_run(docs: list, n: int):
    """The documents of an *n*-point run made of the recorded one (its primary frames in
    turn), as a list."""
    start = next(d for name, d in docs if name == "start")
    md = {k: v for k, v in start.items() if k not in ("uid", "time")}
    md["num_points"] = n
    bundle = compose_run(metadata=md)
    out = [("start", bundle.start_doc)]
    descs = {d["uid"]: d for name, d in docs if name == "descriptor"}
    new_desc = {}
    for uid, d in descs.items():
        b = bundle.compose_descriptor(
            name=d["name"],
            data_keys=d["data_keys"],
            object_keys=d.get("object_keys", {}),
            configuration=d.get("configuration", {}),
        )
        new_desc[uid] = b
        out.append(("descriptor", b.descriptor_doc))
    resources = {}
    for name, d in docs:
        if name == "stream_resource":
            r = {**d, "uid": str(uuid.uuid4()), "run_start": bundle.start_doc["uid"]}
            resources[d["uid"]] = r
            out.append(("stream_resource", r))
    datums = [d for name, d in docs if name == "stream_datum"]
    events = [d for name, d in docs if name == "event"]
    by_seq = {(d["descriptor"], d["seq_nums"]["start"]): d for d in datums}
    dark = [e for e in events if descs[e["descriptor"]]["name"] == "dark"]
    primary = [e for e in events if descs[e["descriptor"]]["name"] == "primary"]
    for stream_events, count in ((dark, len(dark)), (primary, n)):
        desc = stream_events[0]["descriptor"]
        for i in range(count):
            src = stream_events[i % len(stream_events)]
            datum = by_seq[(desc, src["seq_num"])]
            out.append(
                (
                    "stream_datum",
                    {
                        **datum,
                        "uid": str(uuid.uuid4()),
                        "stream_resource": resources[datum["stream_resource"]]["uid"],
                        "descriptor": new_desc[desc].descriptor_doc["uid"],
                        "seq_nums": {"start": i + 1, "stop": i + 2},
                    },
                )
            )
            out.append(
                (
                    "event",
                    new_desc[desc].compose_event(
                        data=src["data"], timestamps=src["timestamps"], seq_num=i + 1
                    ),
                )
            )
    out.append(("stop", bundle.compose_stop()))
    return out


# -- page cache ---------------------------------------------------------------------------
def resident(path: Path) -> float | None:
    """Share of *path* in the page cache (util-linux ``fincore``), None where unknown."""
    try:
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--raw", "-o", "RES", str(path)],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        return int(out.split()[0]) / path.stat().st_size
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def warm(path: Path) -> None:
    with path.open("rb", buffering=0) as f:
        buf = bytearray(16 * 2**20)
        while f.readinto(buf):
            pass


def drop(path: Path, ranges: list[tuple[int, int]] | None = None) -> None:
    """Drop *path*'s pages (or those of byte *ranges*) from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        for off, length in ranges or [(0, 0)]:
            os.posix_fadvise(fd, off, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class Evictor:
    """Drops each frame's pages once the cleaning stage is past it: every pass over the
    distinct frames reads them from the disk again."""

    def __init__(self, path: Path, offsets: list[int], margin: int = 128) -> None:
        self.path, self.offsets, self.margin = path, offsets, margin
        self.done = 0

    def advance(self, frames_out: int) -> None:
        upto = max(0, frames_out - self.margin)
        if upto <= self.done:
            return
        d = len(self.offsets)
        drop(
            self.path,
            [(self.offsets[i % d], FRAME_BYTES) for i in range(self.done, upto)],
        )
        self.done = upto


# -- CPU time from /proc -----------------------------------------------------------------
def _stat(path: str) -> tuple[float, float, int] | None:
    """(user s, system s, minor faults) of a process or thread."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) / TICK, int(fields[12]) / TICK, int(fields[7])


def threads(pid: int) -> dict[int, tuple[str, float]]:
    """{tid: (name, CPU s)} of every thread of *pid*."""
    out = {}
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        st = _stat(f"{base}/{tid}/stat")
        try:
            with open(f"{base}/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if st is not None:
            out[int(tid)] = ("main" if int(tid) == pid else name, st[0] + st[1])
    return out


def thread_group(name: str) -> str:
    for prefix, group in (
        ("main", "receive loop"),
        ("stage-frame_cle", "stage frame_cleaning"),
        ("stage-dark_stat", "stage dark_statistics"),
        ("snapshot-publis", "result publisher"),
        ("ZMQbg", "ZeroMQ I/O"),
        ("publisher", "publisher"),
    ):
        if name.startswith(prefix):
            return group
    return "Dask client, scheduler, nannies; other"


class ThreadClock:
    """CPU seconds of a process's threads by group over a window; threads that end within
    it count up to their last sample (sample often)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first = {tid: cpu for tid, (_, cpu) in threads(pid).items()}
        self.last: dict[int, tuple[str, float]] = {}
        st = _stat(f"/proc/{pid}/stat")
        self.total0 = (st[0] + st[1]) if st else 0.0
        self.total = self.total0

    def sample(self) -> None:
        self.last.update(threads(self.pid))
        st = _stat(f"/proc/{self.pid}/stat")
        if st is not None:
            self.total = st[0] + st[1]

    def groups(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for tid, (name, cpu) in self.last.items():
            g = thread_group(name)
            out[g] = out.get(g, 0.0) + cpu - self.first.get(tid, 0.0)
        named = sum(v for k, v in out.items() if not k.startswith("Dask"))
        out["Dask client, scheduler, nannies; other"] = max(0.0, self.total - self.total0 - named)
        out["total"] = self.total - self.total0
        return out


def proc_tree_rss(pid: int) -> int:
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


# -- one case -----------------------------------------------------------------------------
def one_case(
    cache: dict,
    n: int,
    workers: int,
    batch: int,
    folder: Path,
    source: str = "cache",
    kill_at: float | None = None,
    frames: str = "file",
    idle_s: float = 0.0,
    serve_code: Path | None = None,
) -> dict:
    frames_file = cache["files"]["primary"]
    in_flight = max(64, 2 * workers * batch)
    port, control_port = _free(), _free()
    pipeline = folder / "bench.toml"
    pipeline.write_text(PIPELINE.format(batch=batch))
    env = {
        **os.environ,
        "BLUESKY_PTYCHO_DATA": str(folder / "data"),
        "BLUESKY_PTYCHO_LOGS": str(folder / "logs"),
    }
    if serve_code is not None:  # another version of the back-end (its workers inherit it)
        env["PYTHONPATH"] = str(serve_code)
    log_path = folder / f"serve-{workers}-{batch}-{source}-{frames}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("bluesky-ptycho")),
            # the older spellings of --pipeline, --listen, --control and --results, which
            # the versions of the back-end this compares (serve_code) all understand
            "serve", str(pipeline),
            "--port", str(port),
            "--control-port", str(control_port),
            "--snapshot-port", str(_free()),
            "--workers", str(workers),
            "--max-in-flight", str(in_flight),
            "--max-backlog", str(in_flight + 64),
            "--data-root", str(cache["folder"] / "raw"),
            "--no-catalog",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    control = address("127.0.0.1", control_port)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                request("ping", control, timeout=1)
                break
            except ControlError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"serve did not start: {log_path}") from None
        worker_pids = list(
            request("status", control, timeout=30)["status"]["workers"]["pids"].values()
        )
        idle = {}
        if idle_s:  # what the back-end and its workers spend with nothing to do
            time.sleep(2)
            pids = (proc.pid, *worker_pids)
            a = [_stat(f"/proc/{p}/stat") for p in pids]
            time.sleep(idle_s)
            b = [_stat(f"/proc/{p}/stat") for p in pids]
            ms = [round(1000 * (y[0] + y[1] - x[0] - x[1]) / idle_s, 1)
                  for x, y in zip(a, b, strict=True)]  # fmt: skip
            idle = {"serve_ms_per_s": ms[0], "workers_ms_per_s": ms[1:]}
        if source == "disk":
            drop(frames_file)
        elif source == "cache":
            warm(frames_file)
        res_before = resident(frames_file)
        evictor = Evictor(frames_file, cache["offsets"]) if source == "disk" else None
        pub = Publisher(address("127.0.0.1", port), frames=frames)
        run = long_run(cache["docs"], n)
        uid = run[0][1]["uid"]
        load0 = os.getloadavg()
        serve_clock = ThreadClock(proc.pid)
        me_clock = ThreadClock(os.getpid())
        w0 = {p: _stat(f"/proc/{p}/stat") for p in worker_pids}
        rss: list[int] = []
        killed = None
        t0 = time.perf_counter()
        for name, doc in run:
            pub(name, doc)
        r = None
        while True:
            rss.append(proc_tree_rss(proc.pid))
            serve_clock.sample()
            me_clock.sample()
            st = request("status", control, timeout=30)["status"]
            r = st["runs"].get(uid)
            fc = r["stages"]["frame_cleaning"] if r is not None else None
            if fc is not None:
                if evictor is not None:
                    evictor.advance(fc["frames_out"])
                if kill_at is not None and killed is None and fc["frames_out"] >= kill_at * n:
                    killed = worker_pids[0]
                    os.kill(killed, signal.SIGKILL)
                if fc["state"] == "done":
                    break
            if time.perf_counter() - t0 > 3600:
                raise TimeoutError("the run did not finish within an hour")
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        load1 = os.getloadavg()
        res_after = resident(frames_file)
        w1 = {p: _stat(f"/proc/{p}/stat") for p in worker_pids}
        pub.close()
        fc = r["stages"]["frame_cleaning"]
        wt = fc.get("workers", {})
        serve_cpu = serve_clock.groups()
        pub_cpu = me_clock.groups().get("publisher", 0.0)
        per = 1000.0 / n
        wk = {"user": 0.0, "system": 0.0, "minflt": 0}
        for p in worker_pids:
            if w0.get(p) and w1.get(p):
                wk["user"] += w1[p][0] - w0[p][0]
                wk["system"] += w1[p][1] - w0[p][1]
                wk["minflt"] += w1[p][2] - w0[p][2]
        worker_ms = (wk["user"] + wk["system"]) * per
        kernel_ms = 1000.0 * wt.get("clean_s", 0.0) / max(1, wt.get("frames", 0))
        return {
            "serve_code": str(serve_code or "this checkout"),
            "source": source,
            "transport": frames,
            "workers": workers,
            "batch": batch,
            "max_in_flight": in_flight,
            "n": n,
            "seconds": round(seconds, 2),
            "frames_per_s": round(n / seconds, 1),
            "frames_out": fc["frames_out"],
            "lost": n - fc["frames_out"],
            "valid": fc.get("cleaned"),
            "flagged": fc.get("flagged"),
            "redone": wt.get("redone", 0),
            "killed_worker": killed,
            "peak_rss_mb": round(max(rss) / 2**20),
            "rss_mb_at_10pct_and_end": [round(rss[len(rss) // 10] / 2**20), round(rss[-1] / 2**20)],
            "resident_before_after": [res_before, res_after],
            "load_avg_before_after": [round(x, 2) for x in (*load0[:1], *load1[:1])],
            "cpu_ms_per_frame": {
                "workers": round(worker_ms, 2),
                "workers_system": round(wk["system"] * per, 2),
                "worker_minflt_per_frame": round(wk["minflt"] / n, 1),
                "worker_read": round(1000.0 * wt.get("read_s", 0.0) / n, 2),
                "worker_clean": round(kernel_ms, 2),
                "worker_call_minflt_per_frame": round(wt.get("faults", 0) / n, 1),
                "worker_rest": round(worker_ms - 1000.0 * (wt.get("read_s", 0.0)
                                                          + wt.get("clean_s", 0.0)) / n, 2),
                "serve": {k: round(v * per, 2) for k, v in serve_cpu.items()},
                "publisher": round(pub_cpu * per, 2),
            },
            "worker_cpu_over_kernel": round(worker_ms / kernel_ms, 2) if kernel_ms else None,
            "idle_cpu": idle,
        }  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _free() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the kernel alone, in this process ------------------------------------------------------
def kernel_alone(cache: dict, batch: int = 16, frames: int = 64) -> dict:
    """CPU ms a frame of the nine steps on one core, over *frames* distinct frames of the
    cache (read beforehand), in batches of *batch*, with the settings the stage uses."""
    from bluesky_ptycho.core import arrays, fccd
    from bluesky_ptycho.core.clean import CleanSettings, Preprocessor
    from bluesky_ptycho.core.dark import RunningDarkStats
    from bluesky_ptycho.core.geometry import Beamstop
    from bluesky_ptycho.io.frames import read_frames

    start = next(d for name, d in cache["docs"] if name == "start")
    md = start["ptycho"]
    stats = RunningDarkStats(fccd.RAW_SHAPE, np)
    stats.update(read_frames(str(cache["files"]["dark"]), "/entry/data/data", 0, md["num_darks"]))
    settings = CleanSettings(
        adu_per_photon=float(md["adu_per_photon"]),
        crop_px=int(md["crop_px"]),
        frame_px=256,
        beamstop=Beamstop.from_dict(md.get("beamstop")),
    )
    raws = read_frames(str(cache["files"]["primary"]), "/entry/data/data", 0, frames)
    pre = Preprocessor(stats.result(), settings, np)
    cpus, fft = os.sched_getaffinity(0), arrays._WORKERS
    os.sched_setaffinity(0, {min(cpus)})
    arrays._WORKERS = 1
    try:
        pre(raws[:batch])  # finds the centre, plans the FFTs
        t, c = time.perf_counter(), time.thread_time()
        for i in range(0, frames, batch):
            pre(raws[i : i + batch])
        cpu, wall = time.thread_time() - c, time.perf_counter() - t
    finally:
        os.sched_setaffinity(0, cpus)
        arrays._WORKERS = fft
    return {
        "frames": frames,
        "batch": batch,
        "chunk": pre.chunk,
        "cpu_ms_per_frame": round(1000 * cpu / frames, 2),
        "wall_ms_per_frame": round(1000 * wall / frames, 2),
    }


def kernel_in_a_worker_like_process(cache: Path, distinct: int) -> dict:
    """:func:`kernel_alone` in a process started as the Dask workers are (their allocator
    settings, one FFT thread), pinned to one core."""
    from bluesky_ptycho.pipeline.dask import WORKER_ENV, WORKER_MALLOC

    out = subprocess.run(
        [sys.executable, __file__, "--kernel-only", "--cache", str(cache),
         "--distinct", str(distinct)],
        env={**os.environ, **WORKER_MALLOC, **WORKER_ENV},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


# -- Dask's dispatch, alone ----------------------------------------------------------------
def _noop_batch(refs: list, out_frames: int) -> np.ndarray:
    return np.ones((out_frames, 256, 256), np.float32)


class _NoopActor:
    def clean(self, refs: list, out_frames: int) -> np.ndarray:
        return np.ones((out_frames, 256, 256), np.float32)


def dispatch_overhead(calls: int = 400, batch: int = 16, in_flight: int = 4) -> list[dict]:
    """Per call of a batch's size (*batch* frame references in, *batch* 256² frames out):
    wall and CPU (here: client and scheduler; workers) of a task through the scheduler
    (results relayed by it, or straight from the worker) and of an actor call."""
    from distributed import Client, LocalCluster, wait

    from bluesky_ptycho.pipeline.dask import WORKER_ENV

    refs = [(f"/data/scan/{uuid.uuid4()}.h5", "/entry/data/data", i) for i in range(batch)]
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", env=WORKER_ENV
    )
    rows = []
    try:
        for how, direct in (("task, relayed by the scheduler", False),
                            ("task, straight from the worker", True),
                            ("actor call", True)):  # fmt: skip
            client = Client(cluster, direct_to_workers=direct)
            pids = list(client.run(os.getpid).values())
            actors = []
            if how == "actor call":
                actors = [
                    client.submit(_NoopActor, actor=True, workers=[w], pure=False).result()
                    for w in client.scheduler_info()["workers"]
                ]
            me0 = time.process_time()
            w0 = [_stat(f"/proc/{p}/stat") for p in pids]
            t0 = time.perf_counter()
            pending: list = []
            for k in range(calls):
                if actors:
                    pending.append(actors[k % len(actors)].clean(refs, batch))
                else:
                    pending.append(client.submit(_noop_batch, refs, batch, pure=False))
                if len(pending) >= in_flight:
                    head = pending.pop(0)
                    if actors:
                        head.result()
                    else:
                        wait(head)
                        head.result()
                        head.release()
            for head in pending:
                head.result()
            wall = time.perf_counter() - t0
            me = time.process_time() - me0
            w1 = [_stat(f"/proc/{p}/stat") for p in pids]
            wcpu = sum(b[0] + b[1] - a[0] - a[1] for a, b in zip(w0, w1, strict=True))
            rows.append(
                {
                    "dispatch": how,
                    "frames_per_call": batch,
                    "wall_ms_per_call": round(1000 * wall / calls, 2),
                    "cpu_ms_per_call_client_scheduler": round(1000 * me / calls, 2),
                    "cpu_ms_per_call_workers": round(1000 * wcpu / calls, 2),
                }
            )
            del actors
            client.close()
    finally:
        cluster.close()
    return rows


# -- printing -----------------------------------------------------------------------------
def print_case(r: dict, bound_per_core: float) -> None:
    c = r["cpu_ms_per_frame"]
    cores = min(r["workers"], os.cpu_count() or 1)
    kernel = c["worker_clean"]
    bound = cores * 1000.0 / kernel if kernel else float("nan")
    r["cleaning_bound_fps"] = round(bound, 1)
    r["fraction_of_bound"] = round(r["frames_per_s"] / bound, 3) if kernel else None
    r["fraction_of_bound_kernel_alone"] = round(r["frames_per_s"] / (cores * bound_per_core), 3)
    res = r["resident_before_after"]
    print(
        f"\n[{r['source']}, {r['transport']}, {r['workers']} worker(s), batch {r['batch']}, "
        f"{r['n']} frames] {r['frames_per_s']} frames/s in {r['seconds']} s; out "
        f"{r['frames_out']} (lost {r['lost']}), valid {r['valid']}, flagged {r['flagged']}, "
        f"redone {r['redone']}"
        + (f", worker killed: pid {r['killed_worker']}" if r["killed_worker"] else "")
    )
    print(
        f"  cleaning bound in this run: {cores} core(s) × 1000/{kernel} ms = {bound:.0f} frames/s "
        f"→ {r['fraction_of_bound']} of it (kernel alone: {cores * bound_per_core:.0f} frames/s → "
        f"{r['fraction_of_bound_kernel_alone']}); load average {r['load_avg_before_after']}"
    )
    print(
        f"  workers CPU {c['workers']} ms/frame (system {c['workers_system']}, "
        f"{c['worker_minflt_per_frame']} page faults/frame, "
        f"{c['worker_call_minflt_per_frame']} in the calls) = read {c['worker_read']} + clean "
        f"{kernel} + rest {c['worker_rest']}; worker CPU / kernel = {r['worker_cpu_over_kernel']}"
    )
    s = c["serve"]
    print(
        f"  serve CPU {s['total']} ms/frame: "
        + ", ".join(f"{k} {v}" for k, v in s.items() if k != "total")
        + f"; publisher {c['publisher']} ms/frame"
    )
    if r.get("idle_cpu"):
        i = r["idle_cpu"]
        print(
            f"  idle, before the run (Dask's heartbeats and monitors): serve "
            f"{i['serve_ms_per_s']} ms/s, workers {i['workers_ms_per_s']} ms/s of CPU"
        )
    print(
        f"  memory: peak {r['peak_rss_mb']} MB, at 10 % and end {r['rss_mb_at_10pct_and_end']} MB;"
        f" frames file in page cache before/after: "
        + "/".join("?" if x is None else f"{100 * x:.0f} %" for x in res)
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10000, help="primary frames of the main cases")
    ap.add_argument("--distinct", type=int, default=2000, help="distinct raw frames recorded")
    ap.add_argument("--cache", type=Path, default=HERE / ".frames", help="where they are kept")
    ap.add_argument(
        "--batch",
        type=int,
        default=8,
        help="frames per batch of the main cases (the pipelines' default)",
    )
    ap.add_argument("--batches", type=int, nargs="*", default=[4, 16, 32], help="batch sweep")
    ap.add_argument("--sweep-frames", type=int, default=3000, help="frames per sweep case")
    ap.add_argument("--workers", type=int, nargs="*", default=[1], help="other worker counts")
    ap.add_argument("--no-disk", action="store_true", help="skip the from-disk case")
    ap.add_argument("--no-kill", action="store_true", help="skip the killed-worker case")
    ap.add_argument("--no-dispatch", action="store_true", help="skip Dask's dispatch alone")
    ap.add_argument("--inline", action="store_true", help="also frames sent inline (2 workers)")
    ap.add_argument(
        "--serve-code",
        type=Path,
        help="run the back-end from this source tree (an earlier version: before/after)",
    )
    ap.add_argument("--kernel-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import tempfile

    cache = frame_cache(args.cache, args.distinct)
    if args.kernel_only:
        print(json.dumps(kernel_alone(cache)))
        return
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; python {sys.version.split()[0]}; "
        f"input: {args.distinct} distinct raw frames in {cache['files']['primary']}",
        flush=True,
    )
    kernel = kernel_in_a_worker_like_process(args.cache, args.distinct)
    per_core = 1000.0 / kernel["cpu_ms_per_frame"]
    print(f"kernel alone, one core: {kernel} → {per_core:.0f} frames/s per core", flush=True)
    dispatch = [] if args.no_dispatch else dispatch_overhead(batch=args.batch)
    for d in dispatch:
        print(f"dispatch: {d}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def case(**kw):
            r = one_case(cache, folder=folder, serve_code=args.serve_code, **kw)
            print_case(r, per_core)
            sys.stdout.flush()
            rows.append(r)
            return r

        case(n=args.frames, workers=2, batch=args.batch, source="cache", idle_s=10.0)
        if not args.no_disk:
            case(n=args.frames, workers=2, batch=args.batch, source="disk")
        for w in args.workers:
            case(n=args.frames, workers=w, batch=args.batch, source="cache")
        for b in args.batches:
            case(n=args.sweep_frames, workers=2, batch=b, source="cache")
        if args.inline:
            case(n=args.sweep_frames, workers=2, batch=args.batch, source="cache", frames="inline")
        if not args.no_kill:
            case(n=args.sweep_frames, workers=2, batch=args.batch, source="cache", kill_at=1 / 3)
    two = next(r for r in rows if r["workers"] == 2 and r["source"] == "cache")
    print("\nworkers (page cache):  workers  frames/s  speed-up  efficiency")
    for r in rows:
        if r["source"] == "cache" and r["batch"] == args.batch and r["n"] == args.frames:
            one = next((x for x in rows if x["workers"] == 1 and x["n"] == args.frames), None)
            if one:
                sp = r["frames_per_s"] / one["frames_per_s"]
                print(f"{'':22}{r['workers']:>7}{r['frames_per_s']:>10}{sp:>10.2f}"
                      f"{sp / r['workers']:>12.2f}")  # fmt: skip
    print("batch (2 workers, page cache):  batch  frames/s  worker CPU ms/frame  kernel ms/frame")
    for r in sorted((r for r in rows if r["workers"] == 2 and r["source"] == "cache"
                     and r["killed_worker"] is None and r["transport"] == "file"),
                    key=lambda r: r["batch"]):  # fmt: skip
        c = r["cpu_ms_per_frame"]
        print(f"{'':31}{r['batch']:>6}{r['frames_per_s']:>10}{c['workers']:>21}"
              f"{c['worker_clean']:>17}")  # fmt: skip
    print(
        f"\nheadline: {two['frames_per_s']} frames/s end to end (2 workers, file, page cache, "
        f"{two['n']} frames, lost {two['lost']}) = {two['fraction_of_bound']} of the cleaning "
        f"bound measured in the run; worker CPU / kernel {two['worker_cpu_over_kernel']}"
    )
    out = HERE / f"remote-{platform.node() or 'host'}.json"
    out.write_text(
        json.dumps(
            {
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "distinct_frames": args.distinct,
                "kernel_alone": kernel,
                "dispatch": dispatch,
                "rows": rows,
            },
            indent=1,
        )
    )
    print(f"written: {out}")


if __name__ == "__main__":
    main()
