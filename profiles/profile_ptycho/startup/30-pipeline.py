# The live pipeline (dark statistics, cleaning, STXM, reconstruction), from a pipeline file:
# in this process, or — with BLUESKY_PTYCHO_BACKEND=tcp://HOST:5577 — on a remote back-end
# (`bluesky-ptycho serve` there; BLUESKY_PTYCHO_KEYS names the CURVE key folder if it needs
# one, BLUESKY_PTYCHO_FRAMES=inline sends the frames when it cannot read the detector files).
import os

backend = os.environ.get("BLUESKY_PTYCHO_BACKEND")
if backend:
    from bluesky_ptycho.transport.publisher import Publisher

    pipeline = None
    publisher = Publisher(backend, frames=os.environ.get("BLUESKY_PTYCHO_FRAMES", "file"),
                          keys=os.environ.get("BLUESKY_PTYCHO_KEYS"))
    RE.subscribe(publisher)
else:
    from bluesky_ptycho.callbacks.pipeline import Pipeline

    pipeline = Pipeline(os.environ.get("BLUESKY_PTYCHO_PIPELINE"), output_dir=data_dir() / "cxi",
                        log_dir=log_dir())
    RE.subscribe(pipeline)
    pipeline.subscribe(catalog.writer)
