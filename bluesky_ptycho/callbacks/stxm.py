"""STXM and probe-estimate stage: Nanosurveyor's image worker (Daurer et al. 2017), on the cleaned frames."""

from __future__ import annotations

import numpy as np
from event_model.documents import EventPage, RunStart, RunStop

from bluesky_ptycho.core.arrays import get_xp, to_numpy
from bluesky_ptycho.core.geometry import Geometry
from bluesky_ptycho.core.params import Param, params_of
from bluesky_ptycho.core.stxm import ProbeSettings, probe_estimate, stxm_contrast
from bluesky_ptycho.plugins.stage import DerivedRun, Stage, metadata


class StxmProbe(Stage):
    """STXM contrast per scan point, and a probe estimate from the mean pattern.

    Input: the ``frame_cleaning`` derived run. Output: a derived run with
    stream ``stxm`` (one event per cleaned frame: ``point``, ``x``, ``y``,
    ``photons``, ``dpc_x``, ``dpc_y``, ``valid``) and stream
    ``probe_estimate`` (``probe``, complex, centred on the frame grid;
    ``n_frames``), published once ``probe_frames`` valid frames are in and
    again at the end of the run. The reconstruction can start from it
    (``initial_probe="estimate"``).

    Parameters
    ----------
    device : {"cpu", "gpu"}
    probe_frames : int
        Valid frames averaged before the first probe estimate.
    level : float
        Fraction of the mean pattern's maximum below which it is cut.
    support : float
        Radius of the real-space support, as a fraction of the frame side.
    defocus : bool
        Propagate the estimate by the zone plate's defocus from the run's
        metadata (when it has one): the spot the sample sees, not the focus.
    """

    stage_name = "stxm"
    inputs = ("frame_cleaning/cleaned",)
    outputs = ("stxm/stxm", "stxm/probe_estimate")
    params = (
        Param(
            "probe_frames",
            "int",
            16,
            "Frames averaged before the probe is estimated.",
            min=1,
            max=1_000_000,
        ),
        *params_of(ProbeSettings),
        Param("defocus", "bool", True, "Propagate the estimate by the run's defocus."),
    )

    def __init__(
        self,
        device: str = "cpu",
        probe_frames: int = 16,
        level: float = 0.1,
        support: float = 0.25,
        defocus: bool = True,
    ) -> None:
        self.xp = get_xp(device)
        self.check_params(device, probe_frames=probe_frames, level=level, support=support,
                          defocus=defocus)  # fmt: skip
        self.probe_frames, self.level, self.support = probe_frames, level, support
        self.defocus = bool(defocus)
        self._optics: dict = {}
        self._out: DerivedRun | None = None
        self._sum: np.ndarray | None = None
        self._n = 0
        self._published_at = 0
        self.probe: np.ndarray | None = None
        self.points: dict[int, tuple[float, float, float, float, float]] = {}
        super().__init__()

    def summary(self) -> str:
        probe = (
            f"probe estimated from {self._published_at} frames"
            if self.probe is not None
            else "no probe estimate"
        )
        return f"STXM image of {len(self.points)} point(s); {probe}"

    def start(self, doc: RunStart) -> None:
        if doc.get("stage") != "frame_cleaning":
            return
        md = metadata(doc)
        zp = md.get("zone_plate")
        if self.defocus and zp and zp.get("defocus_m"):
            g = Geometry.from_metadata(md)
            self._optics = {
                "defocus_m": float(zp["defocus_m"]),
                "wavelength_m": g.wavelength_m,
                "pixel_size_m": g.object_pixel_size_m,
            }
        self._out = DerivedRun(
            self,
            doc,
            {
                "ptycho": md,
                "stxm_settings": {
                    "probe_frames": self.probe_frames,
                    "level": self.level,
                    "support": self.support,
                },
            },
        )

    def event_page(self, doc: EventPage) -> None:  # type: ignore[override]  # None: see Stage
        d = doc["data"]
        if self._out is None or "frame" not in d:
            return
        xp = self.xp
        frames = xp.asarray(np.stack([np.asarray(f, np.float32) for f in d["frame"]]))
        valid = np.asarray(d["valid"], bool)
        photons, dpc_y, dpc_x = (to_numpy(a) for a in stxm_contrast(frames))
        for k, p in enumerate(d["point"]):
            x, y = float(d["x"][k]), float(d["y"][k])
            self.points[int(p)] = (x, y, float(photons[k]), float(dpc_x[k]), float(dpc_y[k]))
            self._out.event(
                "stxm",
                {
                    "point": int(p),
                    "x": x,
                    "y": y,
                    "photons": float(photons[k]),
                    "dpc_x": float(dpc_x[k]),
                    "dpc_y": float(dpc_y[k]),
                    "valid": bool(valid[k]),
                },
            )
        if valid.any():
            s = to_numpy(frames[xp.asarray(valid)].sum(axis=0))
            self._sum = s if self._sum is None else self._sum + s
            self._n += int(valid.sum())
        if self._published_at == 0 and self._n >= self.probe_frames:
            self._publish_probe()

    def _publish_probe(self) -> None:
        if self._sum is None or self._out is None or self._n == self._published_at:
            return
        probe = probe_estimate(
            self.xp.asarray(self._sum / self._n), self.level, self.support, **self._optics
        )
        self.probe = to_numpy(probe)
        self._published_at = self._n
        self._out.event("probe_estimate", {"probe": self.probe, "n_frames": int(self._n)})

    def stop(self, doc: RunStop) -> None:
        if self._out is None or doc["run_start"] != self._out.start_doc["source_run"]:
            return
        try:
            self._publish_probe()
        finally:
            self._out.stop()
            self.close()
