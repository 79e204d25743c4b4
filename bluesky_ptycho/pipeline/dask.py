"""The Dask cluster that distributed stages (``where = "dask"``) run on.

:func:`connect` gives a ``distributed.Client``: to a local cluster by default
(one single-threaded worker process per core, each restarted by its nanny if
it dies), to an existing scheduler (``tcp://HOST:PORT``), or to workers
started as SLURM jobs through dask-jobqueue.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

#: Environment of the local workers: one thread per worker, FFTs included (the
#: workers are the parallelism).
WORKER_ENV = {"BLUESKY_PTYCHO_FFT_WORKERS": "1", "OMP_NUM_THREADS": "1"}

#: glibc's allocator in the workers, set before they start (it reads these once). Dask's own
#: default, ``MALLOC_TRIM_THRESHOLD_=65536``, hands freed memory back to the system at once
#: and, set at all, turns off glibc's adaptive threshold, so every temporary over 128 KiB is
#: a fresh mmap whose pages fault in again: the cleaning then spent as much time in page
#: faults as in arithmetic (6.0 ms of system time a frame against 0.02 ms with these;
#: docs/benchmarks.md). With these the workers keep and reuse what a batch needs; their
#: memory stays at the working set of one batch. One arena: the cleaning runs on the actor's
#: thread, whose own arena would otherwise be a series of 64 MiB heaps given back and taken.
WORKER_MALLOC = {
    "MALLOC_TRIM_THRESHOLD_": str(2**30),
    "MALLOC_MMAP_THRESHOLD_": str(2**30),
    "MALLOC_ARENA_MAX": "1",
}


#: Dask settings of the local cluster (scheduler, nannies and workers: the nanny hands its
#: configuration to each worker). Idle, with Dask's defaults, a worker spent 26 ms of CPU a
#: second on its own housekeeping and the back-end (scheduler, client, nannies) 38; with these
#: 3 and 7.5 (docs/benchmarks.md): the statistical profiler, which walks every thread's
#: stack every 10 ms for a dashboard we do not use, is off; the event loops' health tick runs
#: every second instead of every 20 ms, the memory monitor (pause at 80 %, restart at 95 %
#: of the limit) every second instead of every 0.1 s, the system monitor every 2 s.
WORKER_CONFIG = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}


def connect(
    scheduler: str | None = None,
    workers: int | None = None,
    slurm: dict[str, Any] | None = None,
) -> Any:
    """A Dask client for the distributed stages.

    Parameters
    ----------
    scheduler : str, optional
        ``tcp://HOST:PORT`` of a running scheduler (``dask scheduler``);
        its workers are used as they are.
    workers : int, optional
        Workers to start: local processes (default: one per core), or SLURM jobs.
    slurm : dict, optional
        ``dask_jobqueue.SLURMCluster`` settings (``queue``, ``account``,
        ``cores``, ``memory``, ``walltime``, …): workers are submitted as
        SLURM jobs instead of local processes.
    """
    from distributed import Client, LocalCluster

    if scheduler is not None:
        if not scheduler.startswith(("tcp://", "tls://", "inproc://")):
            raise ValueError(f"--scheduler {scheduler!r}: give the scheduler as tcp://HOST:PORT")
        if slurm is not None:
            raise ValueError("give --scheduler or --slurm, not both")
        return Client(scheduler, timeout="10s", direct_to_workers=True)
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"--workers {n}: start at least 1 worker")
    if slurm is not None:
        from dask_jobqueue import SLURMCluster

        exports = [f"export {k}={v}" for k, v in {**WORKER_MALLOC, **WORKER_ENV}.items()]
        settings = {
            "cores": 1,
            "memory": "8GiB",
            "processes": 1,
            **slurm,
            "job_script_prologue": [*exports, *slurm.get("job_script_prologue", [])],
        }
        slurm_cluster = SLURMCluster(**settings)
        slurm_cluster.scale(jobs=n)
        log.info("asked SLURM for %d worker job(s):\n%s", n, slurm_cluster.job_script())
        return Client(slurm_cluster, direct_to_workers=True)
    import dask

    # the nanny (here, in this process) sets these before it starts each worker, and again
    # for the one it starts in place of a worker that died
    import distributed  # noqa: F401  (its configuration, to be changed below)

    spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}), **WORKER_MALLOC}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn, **WORKER_CONFIG}):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.WARNING,
            env=WORKER_ENV,
        )
    # results come straight from the worker that made them, not relayed by the scheduler
    return Client(cluster, direct_to_workers=True)


def shutdown(client: Any) -> None:
    """Close the client and the cluster it started (an outside scheduler is left running)."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()
