"""Quality monitor stage: judges every frame, watches the beam and the sample's drift."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from event_model.documents import EventPage, RunStart, RunStop

from bluesky_ptycho.core.ptycho import ObjectGrid
from bluesky_ptycho.core.quality import drift_estimate, error_outliers, low_flux, transmission_map
from bluesky_ptycho.plugins import Param
from bluesky_ptycho.plugins.stage import DerivedRun, Stage, metadata

#: reasons a frame is bad because of the beam, not the sample or the detector
BEAM_REASONS = ("low flux",)


class QualityMonitor(Stage):
    """Flags bad frames, says when the beam is bad, and estimates the sample's drift.

    Inputs: the ``frame_cleaning`` derived run (each frame's ``valid``,
    ``flag``, ``photons``), and, optionally, the ``reconstruction`` run's
    snapshots (each frame's data error, the live object and probe).

    A frame is bad when the cleaning flagged it (lost packets, saturation,
    corrupted data: the cleaner's reason is kept), when it has less than
    ``low_flux_fraction`` of the photons recent good frames had (a beam
    dump), or when its data error against the live model is more than
    ``error_factor`` times its ``neighbours`` nearest frames' (checked at
    every snapshot). A frame measured again replaces the verdict on its point.

    Output: a derived run with streams

    - ``verdict``: one event per judgement — ``point``, ``x``, ``y`` (m),
      ``bad``, ``reason``, ``photons``, ``relative`` (photons over the
      brightest recent good frames': about 1 where the sample is empty);
    - ``beam``: ``ok``, ``reason``, ``consecutive_bad``, published when it
      changes: not ok once ``suspend_after`` frames in a row had low flux
      (what a suspender pauses the scan on, see
      :class:`bluesky_ptycho.acquisition.feedback.QualityFeedback`), ok again at the
      next frame with the beam on;
    - ``drift``: ``dy_m``, ``dx_m``, ``drifting`` at every snapshot, from
      the recent frames' transmission against what the live reconstruction
      predicts at their positions (:func:`~bluesky_ptycho.core.quality.drift_estimate`).
    """

    stage_name = "quality"
    inputs = ("frame_cleaning/cleaned",)
    optional_inputs = ("reconstruction/snapshot",)
    outputs = ("quality/verdict", "quality/beam", "quality/drift")
    live_params = ("low_flux_fraction", "error_factor", "drift_threshold_m")
    params = (
        Param("low_flux_fraction", "float", 0.3, "A frame with less than this fraction of the "
              "good frames' photons is bad.", min=0, max=1, exclusive=True),
        Param("reference_frames", "int", 32, "Recent good frames the photon reference is the "
              "median of.", min=1, max=100_000),
        Param("suspend_after", "int", 2, "Low-flux frames in a row that make the beam bad.",
              min=1, max=100_000),
        Param("error_factor", "float", 4.0, "Data error over the neighbours' median that makes "
              "a frame bad.", min=1, max=1e6, exclusive="min"),
        Param("neighbours", "int", 8, "Nearest frames a frame's data error is compared with.",
              min=1, max=1000),
        Param("drift_frames", "int", 24, "Recent frames the drift is estimated from.", min=4,
              max=100_000),
        Param("drift_threshold_m", "float", 50e-9, "Drift that flags the sample as drifting.",
              "m", min=0, max=1e-3, exclusive="min"),
    )  # fmt: skip

    def __init__(
        self,
        device: str = "cpu",
        low_flux_fraction: float = 0.3,
        reference_frames: int = 32,
        suspend_after: int = 2,
        error_factor: float = 4.0,
        neighbours: int = 8,
        drift_frames: int = 24,
        drift_threshold_m: float = 50e-9,
    ) -> None:
        self.check_params(
            device, low_flux_fraction=low_flux_fraction, reference_frames=reference_frames,
            suspend_after=suspend_after, error_factor=error_factor, neighbours=neighbours,
            drift_frames=drift_frames, drift_threshold_m=drift_threshold_m,
        )  # fmt: skip
        self.low_flux_fraction = float(low_flux_fraction)
        self.suspend_after = int(suspend_after)
        self.error_factor = float(error_factor)
        self.neighbours = int(neighbours)
        self.drift_threshold_m = float(drift_threshold_m)
        self._good_photons: deque[float] = deque(maxlen=int(reference_frames))
        self._recent: deque[tuple[float, float, float]] = deque(maxlen=int(drift_frames))
        self._first: list[tuple[float, float, float]] = []  # the scan's first good frames
        self._planned = np.zeros((0, 2))  # the planned positions (m), for frames without readbacks
        self.verdicts: dict[int, dict[str, Any]] = {}
        self.beam_ok = True
        self._good_count = 0
        self._low_run = 0
        self.drift_m = (0.0, 0.0)
        self._grid: ObjectGrid | None = None
        self._recon_uid: str | None = None
        self._out: DerivedRun | None = None
        self._cleaning_uid: str | None = None
        super().__init__()

    def summary(self) -> str:
        drift = max(abs(d) for d in self.drift_m) * 1e9
        return (
            f"{len(self.bad_points)} of {len(self.verdicts)} point(s) judged bad; beam "
            f"{'ok' if self.beam_ok else 'bad'} at the end; drift {drift:.3g} nm"
        )

    @property
    def bad_points(self) -> dict[int, str]:
        """Points whose latest verdict is bad, with the reason."""
        return {p: v["reason"] for p, v in self.verdicts.items() if v["bad"]}

    def start(self, doc: RunStart) -> None:
        if doc.get("stage") == "frame_cleaning" and self._out is None:
            self._cleaning_uid = doc["uid"]
            md = metadata(doc)
            self._out = DerivedRun(self, doc, {"ptycho": md})
            planned = md.get("positions_m") or []
            self._planned = np.asarray(planned, np.float64).reshape(-1, 2)
        elif doc.get("stage") == "reconstruction" and "object_grid" in doc:
            g = metadata(doc, "object_grid")
            self._grid = ObjectGrid(tuple(g["shape"]), tuple(g["origin_m"]), g["pixel_size_m"])
            self._recon_uid = doc["uid"]

    def event_page(self, doc: EventPage) -> None:  # type: ignore[override]  # None: see Stage
        d = doc["data"]
        if "frame" in d and "valid" in d and self._out is not None:
            self._frames(d)
        elif "object" in d and "frame_errors" in d:
            self._snapshot(d)

    def _frames(self, d: dict) -> None:
        points = np.asarray(d["point"], np.int64)
        photons = np.asarray(d.get("photons", [np.nan] * len(points)), np.float64)
        valid = np.asarray(d["valid"], bool)
        flags = [str(f) for f in d["flag"]]
        xs, ys = np.array(d["x"], float), np.array(d["y"], float)
        # a frame without stage readbacks is judged at its planned position
        missing = (
            ~(np.isfinite(xs) & np.isfinite(ys)) & (points >= 0) & (points < len(self._planned))
        )
        xs[missing], ys[missing] = self._planned[points[missing]].T
        for k, p in enumerate(points):
            reference = float(np.median(self._good_photons)) if self._good_photons else np.nan
            low = bool(
                np.isfinite(reference)
                and low_flux(photons[k : k + 1], reference, self.low_flux_fraction)[0]
            )
            if not valid[k]:
                reason = flags[k] or "flagged by the cleaning"
            elif low:
                reason = "low flux"
            else:
                reason = ""
                self._good_photons.append(float(photons[k]))
                self._good_count += 1
                self._recent.append((float(xs[k]), float(ys[k]), float(photons[k])))
                if len(self._first) < (self._recent.maxlen or 0):
                    self._first.append(self._recent[-1])
            self._verdict(int(p), float(xs[k]), float(ys[k]), reason, float(photons[k]))
            self._beam(low)

    def _verdict(self, point: int, x: float, y: float, reason: str, photons: float) -> None:
        assert self._out is not None
        # relative to the brightest recent frames: about 1 where the sample lets all through
        bright = float(np.percentile(self._good_photons, 95)) if self._good_photons else np.nan
        v = {
            "point": point,
            "x": x,
            "y": y,
            "bad": bool(reason),
            "reason": reason,
            "photons": photons,
            "relative": photons / bright if np.isfinite(bright) and bright > 0 else np.nan,
        }
        self.verdicts[point] = v
        if reason:
            self.log.info("point %d is bad: %s", point, reason)  # (the summary counts them)
        self._out.event("verdict", v)

    def _beam(self, low: bool) -> None:
        assert self._out is not None
        self._low_run = self._low_run + 1 if low else 0
        ok = self._low_run < self.suspend_after
        if ok != self.beam_ok:
            self.beam_ok = ok
            reason = "" if ok else f"{self._low_run} frames in a row with low flux"
            self.log.warning("beam %s", "back" if ok else f"bad: {reason}")
            self._out.event("beam", {"ok": ok, "reason": reason, "consecutive_bad": self._low_run})

    def _snapshot(self, d: dict) -> None:
        if self._out is None or self._grid is None:
            return
        errors = np.asarray(d["frame_errors"][-1], np.float64)
        points = sorted(p for p, v in self.verdicts.items() if not v["bad"] and p < len(errors))
        if points:
            pos = np.array([[self.verdicts[p]["x"], self.verdicts[p]["y"]] for p in points])
            e = np.full(len(errors), np.nan)
            e[points] = errors[points]
            full_pos = np.zeros((len(errors), 2))
            full_pos[points] = pos
            for p in np.flatnonzero(
                error_outliers(e, full_pos, self.neighbours, self.error_factor)
            ):
                v = self.verdicts[int(p)]
                self._verdict(
                    int(p),
                    v["x"],
                    v["y"],
                    f"data error {e[p]:.3g} over {self.error_factor:g}× its neighbours'",
                    v["photons"],
                )
        self._drift(np.asarray(d["object"][-1]), np.asarray(d["probe"][-1]))

    def _drift(self, obj: np.ndarray, probe: np.ndarray) -> None:
        """Shift of the recent frames against the model, less that of the scan's first frames
        (a shift common to all — a probe off the grid's centre — is not drift)."""
        assert self._out is not None and self._grid is not None
        k = self._recent.maxlen or 0
        if len(self._first) < k or self._good_count < 2 * k or obj.shape != tuple(self._grid.shape):
            return
        tmap = transmission_map(obj, probe)
        shifts = []
        for frames in (self._first, self._recent):
            f = np.asarray(frames)
            shifts.append(drift_estimate(f[:, 2], self._grid.to_pixels(f[:, :2]), tmap))
        dy, dx = np.subtract(shifts[1], shifts[0])
        px = self._grid.pixel_size_m
        self.drift_m = (dy * px, dx * px)
        drifting = bool(np.hypot(*self.drift_m) > self.drift_threshold_m)
        if drifting:
            self.log.warning(
                "the sample drifts: %.0f nm, %.0f nm (rows, columns) against the "
                "live reconstruction",
                self.drift_m[0] * 1e9,
                self.drift_m[1] * 1e9,
            )
        self._out.event(
            "drift", {"dy_m": self.drift_m[0], "dx_m": self.drift_m[1], "drifting": drifting}
        )

    def stop(self, doc: RunStop) -> None:
        if self._out is None:
            return
        ended = doc["run_start"]
        # the reconstruction's run ends last where one feeds this stage; else the cleaning's
        if ended == self._recon_uid or (ended == self._cleaning_uid and self._recon_uid is None):
            self._out.stop()
            self.close()
