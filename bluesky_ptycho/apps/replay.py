"""Offline processing: stream a stored run through a pipeline, producing new derived runs.

The paper's "off-line processing of data saved on disk": the raw run's
documents come back from the catalog as the RunEngine emitted them, their
frames from the detector files they reference, and they go through a
:class:`~bluesky_ptycho.pipeline.runner.Pipeline` — the default one, or
another file, or other parameters — whose derived runs are stored next to
the live ones (their start documents say ``replay: true``, which pipeline made
them, and a ``replay_id`` shared by the runs of one replay: ``bluesky-ptycho
runs`` lists each replay as one entry).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bluesky_ptycho.apps.progress import Progress
from bluesky_ptycho.pipeline.runner import Pipeline, RunStages
from bluesky_ptycho.storage.catalog import Catalog


@dataclass
class ReplayResult:
    """What a replay made."""

    source_uid: str
    derived: dict[str, str]  # stage key → uid of the derived run it emitted
    run: RunStages
    seconds: float
    stored: bool
    #: the replay's own log file (None without a log dir)
    log_path: Path | None = None
    #: the CXI file written (None without an output dir)
    cxi_path: Path | None = None


def replay(
    uid: str,
    catalog: Catalog,
    pipeline: str | Path | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    device: str | None = None,
    output_dir: str | Path | None = None,
    log_dir: str | Path | None = None,
    timeout: float = 3600,
    progress: Progress | None = None,
) -> ReplayResult:
    """Process stored run *uid* again through *pipeline* (with *params* changed).

    *progress*, if given, shows the replay's phases: the frames as they come out cleaned, the
    reconstruction's iterations, its final iterations. With *log_dir* the replay has a log
    file of its own there (``…_<uid>-replay.log``; :attr:`ReplayResult.log_path`).

    Raises
    ------
    KeyError
        When the catalog has no run *uid*.
    ValueError
        When the run is not a ptycho scan, or is itself a derived run.
    """
    try:
        run = catalog[uid]
    except KeyError:
        raise KeyError(
            f"the catalog at {catalog.location} has "
            f"no run {uid!r}; `bluesky-ptycho runs` lists the stored ones"
        ) from None
    start = run.metadata["start"]
    if "stage" in start:
        raise ValueError(
            f"run {uid!r} was derived by the {start['stage']!r} stage from run "
            f"{start['source_run']!r}; replay that raw run instead"
        )
    if "ptycho" not in start:
        raise ValueError(
            f"run {uid!r} (plan {start.get('plan_name')!r}) is not a ptycho scan: its "
            "start document has no 'ptycho' metadata"
        )
    pipe = Pipeline(
        pipeline,
        device=device,
        output_dir=output_dir,
        params=params,
        log_dir=log_dir,
        metadata={"replay": True, "replay_id": str(uuid.uuid4())},
    )
    pipe.subscribe(catalog.writer)
    if progress is not None:
        pipe.subscribe(progress.derived)
        progress.phase("starting", f"reading run {start['uid'][:8]} back from the catalog")
    t0 = time.perf_counter()
    for name, doc in catalog.documents(start["uid"]):
        pipe(name, doc)
    stages = pipe.wait(start["uid"], timeout=timeout)
    if progress is not None:
        progress.phase("saving", "the derived runs to the catalog")
    stored = catalog.writer.flush(timeout=120)
    handler = stages.log_handler
    log_path = Path(handler.baseFilename) if isinstance(handler, logging.FileHandler) else None
    return ReplayResult(
        start["uid"], stages.derived, stages, time.perf_counter() - t0, stored, log_path,
        stages.export.path if stages.export is not None else None,
    )  # fmt: skip
