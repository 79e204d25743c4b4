"""The demo: a simulated scan through the real RunEngine with the in-process pipeline.

Also what the tests and the benchmark call, so the README's main command and
the checks run the same code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from bluesky_ptycho.apps.progress import Progress
from bluesky_ptycho.core.fccd import RAW_FRAME_BYTES
from bluesky_ptycho.core.metrics import align_object, illuminated_region, object_error
from bluesky_ptycho.core.units import metres_per_unit
from bluesky_ptycho.pipeline.runner import Pipeline
from bluesky_ptycho.storage.catalog import Catalog
from bluesky_ptycho.storage.guard import FramesDiskGuard, SpoolGuard
from bluesky_ptycho.storage.scans import ScanCounter

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from bluesky_ptycho.callbacks.reconstruct import ReconstructionResult


@dataclass
class DemoResult:
    """Figures of one demo run."""

    uid: str
    num_points: int
    num_darks: int
    scan_seconds: float
    after_scan_seconds: float
    iterations: int
    data_error: float
    object_error: float
    flags: dict
    cxi_path: Path | None
    figure_path: Path | None
    documents: list
    stored: bool = False
    frc_resolution_nm: float = float("nan")
    object_pixel_nm: float = float("nan")
    stop_reason: str = ""


def run_demo(
    num_points: int = 400,
    pattern: str = "fermat",
    step: float = 100e-9,
    num_darks: int = 25,
    device: str | None = None,
    final_iterations: int | None = None,
    output: Path | str = Path("out/demo"),
    progress: bool | Progress = True,
    keep_documents: bool = False,
    figure: bool = True,
    pipeline: str | Path | None = None,
    catalog: Catalog | None = None,
    log_dir: str | Path | None = None,
    spool_wait: float = 120.0,
    params: dict[str, dict[str, Any]] | None = None,
    scan_ids: ScanCounter | None = None,
) -> DemoResult:
    """Run a simulated scan with live reconstruction; write CXI and a PNG under *output*.

    *pipeline* is a pipeline file (the package's default when None; *device*,
    *params* (``{stage: {name: value}}``) and *final_iterations* override it).
    With a *catalog*, the raw frames go to its raw folder and every run (raw
    and derived) is stored in it;
    without, the frames go to ``<output>/raw``. If the spool cannot be written
    (:class:`~bluesky_ptycho.storage.guard.SpoolGuard`) or the frames' disk has
    room for fewer than 20 frames (:class:`~bluesky_ptycho.storage.guard.FramesDiskGuard`)
    the scan pauses and, after *spool_wait* seconds without space, fails: the
    RunEngine's error is raised.
    *progress* (True, or a :class:`~bluesky_ptycho.apps.progress.Progress` already
    started) shows the phases on stderr: starting, scan, final iterations, saving.
    The scan's number comes from *scan_ids* (default: the counter of the
    *catalog*'s data directory, which the profile shares; scan 1 without a catalog).
    """
    from bluesky import RunEngine

    from bluesky_ptycho.acquisition.plans import ptycho_scan
    from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    params = {k: dict(v) for k, v in (params or {}).items()}
    if final_iterations is not None:
        params.setdefault("reconstruction", {})["final_iterations"] = final_iterations
    bar = progress if isinstance(progress, Progress) else Progress(num_points) if progress else None
    if bar is not None:
        bar.phase("starting", "building the pipeline")
    pipe = Pipeline(pipeline, device=device, output_dir=output, params=params or None,
                    log_dir=log_dir)  # fmt: skip
    if bar is not None:
        bar.phase("starting", f"the simulated beamline (stages: {', '.join(pipe.spec.stages)})")
    if scan_ids is None and catalog is not None:
        scan_ids = ScanCounter(catalog.directory)
    RE = RunEngine({}, scan_id_source=scan_ids) if scan_ids is not None else RunEngine({})
    stage = SampleStage(name="stage")
    shutter = Shutter(name="shutter")
    raw_dir = catalog.raw_dir if catalog is not None else output / "raw"
    fccd = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=raw_dir)
    if catalog is not None:
        RE.subscribe(catalog.writer)
        pipe.subscribe(catalog.writer)
    docs: list = []
    if keep_documents:
        RE.subscribe(lambda n, d: docs.append((n, d)))
        pipe.subscribe(lambda n, d: docs.append((n, d)))
    RE.subscribe(pipe)
    record = _ScanRecord()
    RE.subscribe(record)
    if bar is not None:
        RE.subscribe(bar.raw)
        pipe.subscribe(bar.derived)
    plan = ptycho_scan(
        fccd, stage, shutter, num_points=num_points, step=step, pattern=pattern, num_darks=num_darks
    )
    guards: list[FramesDiskGuard | SpoolGuard] = [
        FramesDiskGuard(raw_dir, RAW_FRAME_BYTES, give_up=spool_wait)
    ]
    try:
        if catalog is not None:
            guards.append(SpoolGuard(catalog.writer, give_up=spool_wait))
        for guard in guards:
            guard.install(RE)
        t0 = time.perf_counter()
        (uid,) = cast(tuple[str, ...], RE(plan))  # (not call_returns_result: the runs' uids)
    finally:
        for guard in guards:
            guard.close()
    t_scan = time.perf_counter() - t0
    run = pipe.wait(uid, timeout=600)
    t_done = time.perf_counter() - t0
    if bar is not None:
        bar.phase("saving", "the catalog and the figure" if catalog is not None else "the figure")
    stored = False
    if catalog is not None:  # in the catalog and read back: the raw run and what it made
        w = catalog.writer
        stored = w.flush(timeout=120) and w.confirmed(uid) and not w.status().pending_runs
    r = run.by_stage("reconstruction").result  # type: ignore[attr-defined]
    if r is None:
        raise RuntimeError(f"the reconstruction produced no result; stage errors: {run.errors}")
    truth = fccd.sample.object_on(r.grid)
    region = illuminated_region(r.illumination, 0.3)
    err = object_error(r.object, truth, region)
    fig = _figure(output / "demo.png", r, truth, region, err) if figure else None
    record.write(output)
    if bar is not None:
        bar.close()
    return DemoResult(
        uid=uid,
        num_points=num_points,
        num_darks=num_darks,
        scan_seconds=t_scan,
        after_scan_seconds=t_done - t_scan,
        iterations=r.iterations,
        data_error=r.errors[-1],
        object_error=err,
        flags=r.flags,
        cxi_path=run.export.path if run.export else None,
        figure_path=fig,
        documents=docs,
        stored=stored,
        frc_resolution_nm=r.frc_resolution_m * 1e9,
        object_pixel_nm=r.grid.pixel_size_m * 1e9,
        stop_reason=r.stop_reason,
    )


class _ScanRecord:
    """Saves a run's start document and the frame files of its streams as ``scan_<id>.json``.

    What ``bluesky-ptycho raw2cxi --scan`` reads to clean the run again offline.
    """

    def __init__(self) -> None:
        self.start: dict | None = None
        self._streams: dict[str, str] = {}
        self._uris: dict[str, str] = {}
        self.files: dict[str, str] = {}

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            self.start, self._streams, self._uris, self.files = doc, {}, {}, {}
            self.measured: list[list[float]] = []
        elif name == "event" and self._streams.get(doc["descriptor"]) == "primary":
            # the stage's readbacks with each frame, in m (raw2cxi places the frames there)
            md = (self.start or {}).get("ptycho", {})
            xy = []
            for axis in ("x", "y"):
                v = doc["data"].get(md.get(f"{axis}_key", f"stage_{axis}"))
                scale = metres_per_unit(md.get(f"{axis}_units"))
                xy.append(float(v) * scale if v is not None else float("nan"))
            self.measured.append(xy)
        elif name == "descriptor":
            self._streams[doc["uid"]] = doc.get("name", "primary")
        elif name == "stream_resource":
            self._uris[doc["uid"]] = doc["uri"]
        elif name == "stream_datum":
            stream = self._streams.get(doc["descriptor"], "primary")
            uri = self._uris.get(doc["stream_resource"], "")
            self.files.setdefault(stream, uri.removeprefix("file://localhost"))

    def write(self, folder: Path) -> Path | None:
        if self.start is None:
            return None
        import json

        path = folder / f"scan_{self.start.get('scan_id', self.start['uid'][:8])}.json"
        start = dict(self.start)
        if self.measured:
            start["ptycho"] = {**start.get("ptycho", {}), "measured_positions_m": self.measured}
        path.write_text(json.dumps({**start, "files": self.files}, indent=1))
        return path


def _figure(
    path: Path, r: ReconstructionResult, truth: np.ndarray, region: np.ndarray, err: float
) -> Path:
    fig = demo_figure(r, truth, region, err)
    fig.savefig(path, dpi=80)
    return path


def demo_figure(
    r: ReconstructionResult, truth: np.ndarray, region: np.ndarray, err: float
) -> Figure:
    """The demo's figure: the reconstruction beside the truth, in the sample's coordinates.

    Object panels (the illuminated region, aligned to the truth) have axes in µm —
    the stage's coordinates, where the probe's centre was at each reading — and a scale
    bar; the probe panel is its window, in µm about its centre; the probe's colorbar is
    in photons per object pixel (``|P|²``, all of a frame's photons summed over it).
    """
    from matplotlib.figure import Figure
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    obj = align_object(r.object, truth, region).aligned
    c = np.vdot(obj[region], truth[region])
    obj = obj * (c / abs(c))  # shift, phase ramp and global phase removed, as in the error
    ys, xs = np.nonzero(region)
    crop = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    px_um = r.grid.pixel_size_m * 1e6
    side = r.probe.shape[-1]
    # stage coordinates (µm) of the object's pixel edges: the grid's origin is where the
    # probe's centre is when the view's corner sits on pixel (0, 0)
    x0 = r.grid.origin_m[0] * 1e6 + (xs.min() - side / 2) * px_um
    y0 = r.grid.origin_m[1] * 1e6 + (ys.min() - side / 2) * px_um
    h, w = crop[0].stop - crop[0].start, crop[1].stop - crop[1].start
    sample = (x0, x0 + w * px_um, y0 + h * px_um, y0)
    window = (-side / 2 * px_um, side / 2 * px_um, side / 2 * px_um, -side / 2 * px_um)
    px_nm = px_um * 1e3
    fig = Figure(figsize=(13, 8.5), constrained_layout=True)
    ax = fig.subplots(2, 3)
    panels = [
        (np.angle(obj[crop]), "object phase", "twilight", sample, "phase (rad)"),
        (np.abs(obj[crop]) / np.median(np.abs(obj[region])), "object amplitude", "gray",
         sample, "amplitude (relative to the median)"),
        (np.abs(r.probe[0]) ** 2, "probe intensity (first mode)", "magma", window,
         f"photons per pixel ({px_nm:.3g} nm)²"),
        (np.angle(truth[crop]), "true phase", "twilight", sample, "phase (rad)"),
        (np.abs(truth[crop]), "true amplitude", "gray", sample, "amplitude (transmission)"),
    ]  # fmt: skip
    for a, (img, title, cmap, extent, unit) in zip(ax.flat, panels, strict=False):
        im = a.imshow(img, cmap=cmap, extent=extent)
        a.set_title(title)
        a.set_xlabel("x (µm)")
        a.set_ylabel("y (µm)")
        fig.colorbar(im, ax=a, shrink=0.8, label=unit)
        length_um = _nice_length(0.25 * (extent[1] - extent[0]))
        label = f"{length_um:g} µm" if length_um >= 1 else f"{length_um * 1e3:g} nm"
        a.add_artist(AnchoredSizeBar(a.transData, length_um, label, "lower right", pad=0.4,
                                     color="white", frameon=False, size_vertical=px_um))  # fmt: skip
    a = ax[1, 2]
    a.semilogy(np.arange(1, len(r.errors) + 1), r.errors)
    a.set_xlabel("iteration")
    a.set_ylabel("data error")
    a.set_title(f"object error {err:.3f}")
    return fig


def _nice_length(at_most: float) -> float:
    """The longest 1, 2 or 5 × 10ⁿ not over *at_most* (> 0)."""
    decade = 10.0 ** np.floor(np.log10(at_most))
    return float(max(m * decade for m in (1, 2, 5) if m * decade <= at_most))
