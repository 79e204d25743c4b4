# The live pipeline (dark statistics, cleaning, STXM, reconstruction), from a pipeline file:
# in this process, or — with BLUESKY_PTYCHO_BACKEND=tcp://HOST:5577 — on a remote back-end
# (`bluesky-ptycho serve` there; BLUESKY_PTYCHO_KEYS names the CURVE key folder if it needs
# one, BLUESKY_PTYCHO_FRAMES=inline sends the frames when it cannot read the detector files).
import os

backend = os.environ.get("BLUESKY_PTYCHO_BACKEND")
if backend:
    from bluesky_ptycho.transport.publisher import Publisher

    pipeline = None
    publisher = Publisher(
        backend,
        frames=os.environ.get("BLUESKY_PTYCHO_FRAMES", "file"),
        keys=os.environ.get("BLUESKY_PTYCHO_KEYS"),
    )
    RE.subscribe(publisher)
    # the back-end's results (verdicts, snapshots) come back on its PUB socket (serve's
    # --results, port 5579 by default): what the suspender, the rescans and a viewer follow
    from bluesky_ptycho.transport.snapshots import SnapshotSubscriber

    _host, _, _port = backend.rpartition(":")
    results = SnapshotSubscriber(
        os.environ.get("BLUESKY_PTYCHO_RESULTS", f"{_host}:{int(_port) + 2}"),
        keys=os.environ.get("BLUESKY_PTYCHO_KEYS"),
    )
else:
    from bluesky_ptycho.pipeline.runner import Pipeline

    pipeline = Pipeline(
        os.environ.get("BLUESKY_PTYCHO_PIPELINE"), output_dir=data_dir() / "cxi", log_dir=log_dir()
    )
    RE.subscribe(pipeline)
    pipeline.subscribe(catalog.writer)
    results = pipeline

# Adaptive rescans: RE(ptycho_scan(..., rescan=rescan)) measures again, in the same run, the
# points the quality monitor judged bad (bluesky_ptycho.acquisition.rescan.RescanPlanner).
from bluesky_ptycho.acquisition.rescan import RescanPlanner

rescan = RescanPlanner(x_key=stage.x.name, y_key=stage.y.name)
results.subscribe(rescan)
