# The live pipeline (dark statistics, cleaning, STXM, reconstruction), from a pipeline file.
import os

from bluesky_ptycho.callbacks.pipeline import Pipeline

pipeline = Pipeline(os.environ.get("BLUESKY_PTYCHO_PIPELINE"), output_dir=data_dir() / "cxi",
                    log_dir=log_dir())
RE.subscribe(pipeline)
pipeline.subscribe(catalog.writer)
