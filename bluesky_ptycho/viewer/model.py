"""What the live view shows, kept from the pipeline's documents (no Qt, no napari).

:class:`LiveModel` is a document callback: subscribe it to a pipeline or to a
:class:`~bluesky_ptycho.transport.snapshots.SnapshotSubscriber`. It runs on
whatever thread delivers documents, keeps only the latest of each thing
under a lock, and calls ``on_change`` (the widget turns that into a Qt
signal, so the GUI thread does the drawing). :meth:`LiveModel.take` hands
the GUI thread a consistent copy. Events are recognised by their data keys,
so a viewer that joins mid-scan (and missed the descriptors) works too.

:class:`Controls` sends abort / reset / parameter changes to an in-process
pipeline or, by the control channel, to a back-end.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from event_model import unpack_event_page
from event_model.documents import EventPage


@dataclass
class LiveState:
    """One consistent view of the model (arrays are never changed after they are stored).

    Attributes
    ----------
    object : (Y, X) complex64 or None
    probe : (M, H, W) complex64 or None
    frame : (H, W) float32 or None
        The newest cleaned frame (photons, DC at the centre).
    frame_point : int
    stxm : (K, 3) float64
        ``x, y, photons`` of every frame so far (a point measured again: its latest).
    bad : (B, 2) float64
        ``x, y`` of the points whose latest verdict is bad.
    errors : (I,) float64
        Data error per iteration.
    frame_errors : (K, 3) float64
        ``x, y, data error`` of every frame the latest snapshot judged (each
        frame's misfit against the model: where the data disagree).
    frc : dict or None
        The latest half-set FRC: ``resolution_nm``, ``frequency_per_nm``,
        ``correlation``, ``half_bit``, ``iteration``, ``final``.
    pixel_nm : float
        The object's pixel (NaN until the reconstruction's run starts).
    origin_nm : (float, float)
        (x, y) in nm of the object's pixel (0, 0) plus half a frame: where
        pixel (0, 0) of the object sits in the stage's coordinates.
    iteration, n_measured : int
    final : bool
    log : list of str
    version : int
    """

    object: np.ndarray | None = None
    probe: np.ndarray | None = None
    frame: np.ndarray | None = None
    frame_point: int = -1
    stxm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    bad: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    errors: np.ndarray = field(default_factory=lambda: np.zeros(0))
    frame_errors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    frc: dict | None = None
    pixel_nm: float = float("nan")
    origin_nm: tuple[float, float] = (0.0, 0.0)
    iteration: int = 0
    n_measured: int = 0
    final: bool = False
    run: str = ""
    log: list[str] = field(default_factory=list)
    version: int = 0


class LiveModel:
    """Keeps the latest results of the run in progress (module docstring).

    Parameters
    ----------
    on_change : callable(), optional
        Called (on the documents' thread) after each change.
    max_log : int
        Log lines kept.
    """

    def __init__(self, on_change: Callable[[], Any] | None = None, max_log: int = 500) -> None:
        self.on_change = on_change
        self._lock = threading.Lock()
        self._log: deque[str] = deque(maxlen=max_log)
        self._roots: dict[str, str] = {}
        self._reset("")

    def _reset(self, run: str) -> None:
        self._run = run
        self._object: np.ndarray | None = None
        self._probe: np.ndarray | None = None
        self._frame: np.ndarray | None = None
        self._frame_point = -1
        self._stxm: dict[int, tuple[float, float, float]] = {}
        self._bad: dict[int, tuple[float, float]] = {}
        self._errors: list[float] = []
        self._frame_errors = np.zeros(0)
        self._frc: dict | None = None
        self._pixel_nm = float("nan")
        self._origin_nm = (0.0, 0.0)
        self._iteration = self._n_measured = 0
        self._final = False
        self._version = getattr(self, "_version", 0) + 1

    def log(self, line: str) -> None:
        """Add a line to the log (any thread)."""
        with self._lock:
            self._log.append(f"{time.strftime('%H:%M:%S')} {line}")
            self._version += 1
        self._changed()

    # -- documents in (any thread) ----------------------------------------------------
    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self._start(doc)
        elif name == "event":
            self._event(doc["data"])
        elif name == "event_page":
            for ev in unpack_event_page(cast(EventPage, doc)):
                self._event(ev["data"])
        elif name == "stop" and doc.get("exit_status") not in (None, "success"):
            self.log(f"a stage's run ended: {doc.get('exit_status')} {doc.get('reason', '')}")

    def _start(self, doc: dict) -> None:
        source = doc.get("source_run")
        if source is None:
            return
        source = self._roots.get(source, source)  # the raw run a chain of stages started from
        self._roots[doc["uid"]] = source
        if source != self._run:
            with self._lock:
                self._reset(source)
            scan = doc.get("source_scan_id", doc.get("scan_id", "?"))
            self.log(f"scan {scan} ({source[:8]}) started")
        grid = doc.get("object_grid")
        if isinstance(grid, dict) and "pixel_size_m" in grid:
            frame = int(doc.get("ptycho", {}).get("frame_px", 0))
            px = float(grid["pixel_size_m"]) * 1e9
            with self._lock:  # stage coordinates of the object's pixel (0, 0)
                self._pixel_nm = px
                ox, oy = (float(v) * 1e9 for v in grid.get("origin_m", (0.0, 0.0)))
                self._origin_nm = (ox - frame / 2 * px, oy - frame / 2 * px)

    def _event(self, d: dict) -> None:
        line = None
        with self._lock:
            if "object" in d and "probe" in d:
                self._object = np.asarray(d["object"])
                self._probe = np.asarray(d["probe"])
                self._iteration = int(d.get("iteration", 0))
                self._n_measured = int(d.get("n_measured", 0))
                self._final = bool(d.get("final", False))
                if "frame_errors" in d:
                    self._frame_errors = np.asarray(d["frame_errors"], np.float64)
                if self._final:
                    line = f"final image: {self._iteration} iterations, {self._n_measured} frames"
                    if d.get("stop_reason"):
                        line += f" (final iterations stopped: {d['stop_reason']})"
            elif "correlation" in d and "half_bit" in d:
                self._frc = {
                    k: d[k]
                    for k in (
                        "resolution_nm",
                        "frequency_per_nm",
                        "correlation",
                        "half_bit",
                        "iteration",
                        "final",
                    )
                }
                if self._frc["final"]:
                    line = f"resolution {float(d['resolution_nm']):.3g} nm (FRC of the halves)"
            elif "data_error" in d and "iteration" in d:
                self._errors.append(float(d["data_error"]))
            elif "frame" in d and "valid" in d:
                if d["valid"]:
                    self._frame = np.asarray(d["frame"], np.float32)
                    self._frame_point = int(d["point"])
            elif "dpc_x" in d and "photons" in d:
                self._stxm[int(d["point"])] = (float(d["x"]), float(d["y"]), float(d["photons"]))
            elif "bad" in d and "reason" in d:
                p = int(d["point"])
                if d["bad"]:
                    self._bad[p] = (float(d["x"]), float(d["y"]))
                    line = f"point {p} bad: {d['reason']}"
                elif self._bad.pop(p, None) is not None:
                    line = f"point {p} measured again: good"
            elif "ok" in d and "consecutive_bad" in d:
                line = "beam back" if d["ok"] else f"beam bad: {d['reason']} (the scan waits)"
            elif d.get("drifting"):
                line = (
                    f"sample drift {d['dy_m'] * 1e9:.0f}, {d['dx_m'] * 1e9:.0f} nm (rows, columns)"
                )
            else:
                return
            self._version += 1
        if line is not None:
            self.log(line)
        else:
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- the GUI thread -------------------------------------------------------------------
    def take(self) -> LiveState:
        """A consistent copy of what to show now."""
        with self._lock:
            stxm = np.array(list(self._stxm.values())) if self._stxm else np.zeros((0, 3))
            bad = np.array(list(self._bad.values())) if self._bad else np.zeros((0, 2))
            fe = self._frame_errors
            judged = [(x, y, fe[p]) for p, (x, y, _) in self._stxm.items()
                      if p < len(fe) and np.isfinite(fe[p])]  # fmt: skip
            return LiveState(
                object=self._object,
                probe=self._probe,
                frame=self._frame,
                frame_point=self._frame_point,
                stxm=stxm,
                bad=bad,
                errors=np.asarray(self._errors),
                frame_errors=np.array(judged) if judged else np.zeros((0, 3)),
                frc=self._frc,
                pixel_nm=self._pixel_nm,
                origin_nm=self._origin_nm,
                iteration=self._iteration,
                n_measured=self._n_measured,
                final=self._final,
                run=self._run,
                log=list(self._log),
                version=self._version,
            )


#: the unit of every layer's two image axes: napari draws all layers in one world and, when
#: their units differ (nm beside pixels, or beside nm⁻¹), ignores them all and warns
LENGTH_UNIT = "nm"


def layer_scale(pixel_nm: float | None, ndim: int = 2) -> dict[str, tuple]:
    """napari's ``scale`` and ``units`` for an image of *ndim* axes whose last two have
    square pixels of *pixel_nm* nm; leading axes (probe modes, frame numbers) count one
    per step. Without a pixel size (a file that does not say it): nothing, so the layer
    stays in pixels, as it is; napari then says the units differ from the others'."""
    if pixel_nm is None or not pixel_nm > 0:
        return {}
    lead = ndim - 2
    return {
        "scale": (1.0,) * lead + (float(pixel_nm),) * 2,
        "units": ("pixel",) * lead + (LENGTH_UNIT, LENGTH_UNIT),
    }


def frame_pixel_nm(energy_ev: float, distance_m: float, pixel_size_m: float, side_px: int) -> float:
    """The length (nm) a diffraction frame's pixel is drawn with: ``λ·z / (N·p)``.

    A frame lives in detector space: its pixel *k* is the spatial frequency
    ``k / (N·Δx)`` with ``Δx = λ·z / (N·p)`` (*N* pixels of side *p* at distance *z*).
    napari draws every layer in one world with one unit per axis, so a frame
    cannot be in nm⁻¹ beside an object in nm (napari would drop the units and
    warn). It is drawn with pixels of ``Δx``, the object-plane pixel: a frame
    then covers exactly the sample window whose far field it is (the probe's
    ``N × N`` window), in a panel of its own; the scale bar measures that window,
    not distances in the pattern. The detector plane's own scale (30 µm pixels)
    would be ~3000 times the object's, and napari fits the view to all layers,
    hidden ones included.
    """
    from bluesky_ptycho.core.geometry import Geometry

    g = Geometry(energy_ev=energy_ev, distance_m=distance_m, pixel_size_m=pixel_size_m,
                 crop_px=int(side_px), frame_px=int(side_px))  # fmt: skip
    return g.object_pixel_size_m * 1e9


def stxm_image(stxm: np.ndarray, size: int = 96) -> tuple[np.ndarray, tuple[float, float], float]:
    """Values at scan points gridded to an image: (image, (x0, y0) of pixel (0, 0) in m, pixel in m).

    *stxm* is ``(K, 3)``: ``x, y`` in m and a value (the photons of the STXM
    image, or each frame's data error).

    Each pixel takes the photons of the nearest measured point (Voronoi
    cells), so the picture fills in as the scan goes; pixels farther than
    two median point spacings from any point are NaN.
    """
    from scipy.spatial import cKDTree

    if len(stxm) < 2:
        return np.full((1, 1), np.nan, np.float32), (0.0, 0.0), 1.0
    xy, t = stxm[:, :2], stxm[:, 2]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    px = float(max((hi - lo).max(), 1e-12) / (size - 1))
    gx, gy = np.meshgrid(lo[0] + px * np.arange(size), lo[1] + px * np.arange(size))
    tree = cKDTree(xy)
    dist, idx = tree.query(np.stack([gx.ravel(), gy.ravel()], 1))
    spacing = float(np.median(tree.query(xy, k=2)[0][:, 1]))
    img = np.where(dist <= 2 * max(spacing, px), t[idx], np.nan).reshape(size, size)
    return img.astype(np.float32), (float(lo[0]), float(lo[1])), px


class Controls:
    """Abort, reset and parameter changes, for an in-process pipeline or a back-end.

    Parameters
    ----------
    pipeline : Pipeline, optional
        The pipeline in this process.
    control : str, optional
        A back-end's control address (``tcp://host:5578``).
    keys : path-like, optional
        CURVE key folder of that back-end.
    """

    def __init__(self, pipeline: Any = None, control: str | None = None, keys: Any = None) -> None:
        if (pipeline is None) == (control is None):
            raise ValueError("Controls: give either a pipeline (in-process) or a control address")
        self.pipeline, self.control, self.keys = pipeline, control, keys

    def _request(self, command: str, **fields: Any) -> dict:
        from bluesky_ptycho.transport.control import request

        assert self.control is not None  # (given when there is no pipeline)
        return request(command, self.control, self.keys, timeout=5.0, **fields)

    def abort(self) -> str:
        if self.pipeline is not None:
            uids = self.pipeline.abort()
        else:
            uids = self._request("abort").get("aborted", [])
        return f"aborted {len(uids)} run(s)"

    def reset(self) -> str:
        if self.pipeline is not None:
            self.pipeline.reset()
        else:
            self._request("reset")
        return "pipeline reset: parameters as in its file, no runs kept"

    def set(self, text: str) -> str:
        """Apply ``stage.key=value`` (several separated by spaces); returns how each applied.
        Raises ValueError (nothing changed) for a bad one."""
        from bluesky_ptycho.pipeline.assignments import stage_assignments

        pairs = text.split()
        if not pairs:
            raise ValueError("write stage.key=value, e.g. reconstruction.final_iterations=80")
        out = []
        for stage, params in stage_assignments(pairs).items():
            if self.pipeline is not None:
                applied = self.pipeline.set(stage, params)
            else:
                applied = self._request("set", stage=stage, params=params)["applied"]
            out += [f"{stage}.{k}: {how}" for k, how in applied.items()]
        return "; ".join(out)

    def status(self) -> str:
        from bluesky_ptycho.transport.control import format_status

        if self.pipeline is not None:
            return format_status({**self.pipeline.status(), "server": {"address": "in-process"}})
        return format_status(self._request("status")["status"])
