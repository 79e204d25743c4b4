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
        return Client(scheduler, timeout="10s")
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n < 1:
        raise ValueError(f"--workers {n}: start at least 1 worker")
    if slurm is not None:
        from dask_jobqueue import SLURMCluster

        settings = {"cores": 1, "memory": "8GiB", "processes": 1, **slurm}
        slurm_cluster = SLURMCluster(**settings)
        slurm_cluster.scale(jobs=n)
        log.info("asked SLURM for %d worker job(s):\n%s", n, slurm_cluster.job_script())
        return Client(slurm_cluster)
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.WARNING,
        env=WORKER_ENV,
    )
    return Client(cluster)


def shutdown(client: Any) -> None:
    """Close the client and the cluster it started (an outside scheduler is left running)."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()
