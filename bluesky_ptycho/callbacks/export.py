"""Writes a scan's cleaned frames, probe estimate and final reconstruction to a CXI file."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
from event_model import DocumentRouter
from event_model.documents import EventDescriptor, EventPage, RunStart, RunStop

from bluesky_ptycho.core.geometry import Geometry
from bluesky_ptycho.io.cxi import CxiData, write_cxi
from bluesky_ptycho.plugins.stage import metadata


class CxiExport(DocumentRouter):
    """Collects the ``cleaned`` frames, the last ``probe_estimate`` and the final
    ``snapshot``; writes CXI when the run of stage *after* stops.

    Subscribe it to the stages. With ``after="reconstruction"`` (a pipeline
    that reconstructs) the file holds the frames and the reconstruction; with
    ``after="stxm"`` (``bluesky-ptycho raw2cxi``) the frames and the probe
    estimate in ``source_1/illumination``. :attr:`path` is set once written.
    """

    def __init__(self, path: str | Path, after: str = "reconstruction") -> None:
        super().__init__()
        self.target = Path(path)
        self.after = after
        self.flags: dict[int, str] = {}
        self._probe: np.ndarray | None = None
        self.path: Path | None = None
        self._frames: dict[int, tuple[np.ndarray, float, float]] = {}
        self._md: dict | None = None
        self._final: dict | None = None
        self._recon_uid: str | None = None
        self._streams: dict[str, str] = {}

    # Takes any map, as a stage's subscriber (a Callback); DocumentRouter only reads it.
    def __call__(
        self, name: str, doc: Mapping[str, Any], validate: bool = False
    ) -> tuple[str, Any]:
        return super().__call__(name, cast(dict, doc), validate)

    def start(self, doc: RunStart) -> None:
        if doc.get("stage") == "frame_cleaning":
            self._md = metadata(doc)
        if doc.get("stage") == self.after:
            self._recon_uid = doc["uid"]

    def descriptor(self, doc: EventDescriptor) -> None:
        self._streams[doc["uid"]] = doc["name"]

    def event_page(self, doc: EventPage) -> None:  # type: ignore[override]  # None: see Stage
        stream = self._streams.get(doc["descriptor"])
        d = doc["data"]
        if stream == "cleaned":
            for i, ok in enumerate(d["valid"]):
                point = int(d["point"][i])
                if ok:
                    self._frames[point] = (np.asarray(d["frame"][i]), d["x"][i], d["y"][i])
                    self.flags.pop(point, None)
                else:
                    self._frames.pop(point, None)
                    self.flags[point] = str(d["flag"][i])
        elif stream == "probe_estimate":
            self._probe = np.asarray(d["probe"][-1])
        elif stream == "snapshot" and any(d["final"]):
            self._final = {k: v[-1] for k, v in d.items()}

    def stop(self, doc: RunStop) -> None:
        if doc["run_start"] != self._recon_uid or self._md is None:
            return
        md = self._md
        points = sorted(self._frames)
        if not points:
            return
        frames = np.stack([self._frames[p][0] for p in points]).astype(np.float32)
        trans = np.array([[self._frames[p][1], self._frames[p][2], 0.0] for p in points])
        g = Geometry.from_metadata(md)
        ps = g.frame_pixel_size_m
        self.path = write_cxi(
            self.target,
            CxiData(
                frames=frames,
                translations_m=trans,
                energy_ev=md["energy_ev"],
                distance_m=md["distance_m"],
                pixel_size_m=(ps, ps),
                mask=np.zeros(frames.shape[1:], np.uint32),
                illumination=self._probe,
                probe=None if self._final is None else self._final["probe"],
                object=None if self._final is None else self._final["object"],
                object_pixel_size_m=g.object_pixel_size_m,
            ),
        )
