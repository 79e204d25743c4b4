# IPython startup for a ptychography session: `ipython --profile-dir=profiles/profile_ptycho`.
# Gives RE, the simulated FCCD and stages, and the live pipeline; then
#     RE(ptycho_scan(fccd, stage, shutter, num_points=400))
from pathlib import Path

from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback

from bluesky_ptycho.callbacks.pipeline import Pipeline
from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD
from bluesky_ptycho.plans import ptycho_scan  # noqa: F401  (for the operator)

DATA = Path.home() / "bluesky_ptycho_data"
RE = RunEngine({})
bec = BestEffortCallback()
bec.disable_plots()
RE.subscribe(bec)
stage = SampleStage(name="stage")
shutter = Shutter(name="shutter")
fccd = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=DATA / "raw")
pipeline = Pipeline(device="cpu", output_dir=DATA / "cxi")
RE.subscribe(pipeline)
