"""A third-party stage: photons per cleaned frame above a threshold, as a derived run."""

import numpy as np

from bluesky_ptycho.callbacks.base import DerivedRun, Stage
from bluesky_ptycho.plugins import Param


class PhotonCounter(Stage):
    """Counts the photons of each cleaned frame in pixels above a threshold."""

    stage_name = "photon_counter"
    inputs = ("frame_cleaning/cleaned",)
    outputs = ("photon_counter/counts",)
    params = (Param("threshold", "float", 0.5, "pixels below this are left out", "photons", min=0),)

    def __init__(self, device="cpu", threshold=0.5):
        self.threshold = threshold
        self._out = None
        self._streams = {}
        super().__init__()

    def start(self, doc):
        if doc.get("stage") == "frame_cleaning":
            self._out = DerivedRun(self, doc)

    def descriptor(self, doc):
        self._streams[doc["uid"]] = doc["name"]

    def event_page(self, doc):
        if self._out is None or self._streams.get(doc["descriptor"]) != "cleaned":
            return
        for point, frame in zip(doc["data"]["point"], doc["data"]["frame"], strict=True):
            f = np.asarray(frame)
            counts = float(f[f >= self.threshold].sum())
            self._out.event("counts", {"point": int(point), "photons": counts})

    def stop(self, doc):
        if self._out is not None and doc["run_start"] == self._out.start_doc["source_run"]:
            self._out.stop()
            self.close()
