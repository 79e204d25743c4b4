# The usual table of readings while a scan runs (plots off: the napari viewer shows images).
from bluesky.callbacks.best_effort import BestEffortCallback

bec = BestEffortCallback()
bec.disable_plots()
RE.subscribe(bec)
