"""Simulate an experiment from an image layer (as Nanosurveyor does from an SEM image,
Daurer et al. 2017).

Pick an image layer, a scan size and a photon count: a raster scan over a
sample made from the image (:func:`bluesky_ptycho.core.sim.object_from_image`)
is simulated with Poisson noise, written to a CXI file, and reconstructed
with rPIE; the true sample, the frames and the reconstruction appear as
layers. The work runs on a napari worker thread, so the viewer stays live.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

if TYPE_CHECKING:
    import napari


def simulate_from_image(
    image: np.ndarray,
    n_side: int = 12,
    photons: float = 1e6,
    iterations: int = 40,
    output: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Simulate, write the CXI file, reconstruct; returns the arrays and the file's path."""
    from bluesky_ptycho.core.ptycho import probe_from_counts
    from bluesky_ptycho.core.sim import fzp_probe, simulate_scan
    from bluesky_ptycho.core.solvers import RPIE, RpieOptions
    from bluesky_ptycho.io.cxi import CxiData, write_cxi

    scan = simulate_scan(n_side=n_side, photons=photons, image=image, seed=seed)
    g = scan.geometry
    out = Path(output or tempfile.mkdtemp(prefix="bluesky-ptycho-sim-")) / "simulated.cxi"
    trans = np.column_stack([scan.positions_m, np.zeros(len(scan.positions_m))])
    from bluesky_ptycho.core.geometry import ZonePlate

    guess = probe_from_counts(
        fzp_probe(g, ZonePlate()), float(scan.intensities.sum(axis=(1, 2)).mean())
    )
    solver = RPIE(scan.positions_px, scan.grid.shape, guess, RpieOptions())
    solver.add_frames(np.arange(len(scan.intensities)), scan.intensities)
    errors = solver.iterate(iterations)
    write_cxi(
        out,
        CxiData(
            frames=scan.intensities,
            translations_m=trans,
            energy_ev=g.energy_ev,
            distance_m=g.distance_m,
            pixel_size_m=(g.pixel_size_m, g.pixel_size_m),
            probe=np.asarray(solver.probe[0]),
            object=np.asarray(solver.object),
            object_pixel_size_m=g.object_pixel_size_m,
        ),
    )
    return {
        "truth": scan.object,
        "frames": scan.intensities,
        "object": np.asarray(solver.object),
        "errors": errors,
        "path": out,
        "pixel_m": g.object_pixel_size_m,
    }


class SimulateWidget(QWidget):
    """Dock widget: simulate and reconstruct an experiment on a sample made from an image layer."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        form = QFormLayout(self)
        self.layer = QComboBox()
        # PyQt takes a widget's Qt properties as keyword arguments; its stubs know only the
        # constructor's own arguments
        self.n_side = QSpinBox(minimum=4, maximum=40, value=12)  # type: ignore[call-arg]
        self.photons = QSpinBox(minimum=3, maximum=9, value=6)  # type: ignore[call-arg]
        self.iterations = QSpinBox(minimum=1, maximum=500, value=40)  # type: ignore[call-arg]
        self.run_button = QPushButton("Simulate and reconstruct")
        self.message = QLabel("pick an image layer (an SEM image, say)")
        self.message.setWordWrap(True)
        form.addRow("image layer", self.layer)
        form.addRow("points per side", self.n_side)
        form.addRow("photons per frame (10^n)", self.photons)
        form.addRow("rPIE iterations", self.iterations)
        form.addRow(self.run_button)
        form.addRow(self.message)
        self.run_button.clicked.connect(self.run)
        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        self._layers_changed()
        self.worker: Any = None
        self._source = ""

    def _layers_changed(self, *_: Any) -> None:
        import napari.layers

        current = self.layer.currentText()
        self.layer.clear()
        names = [lay.name for lay in self.viewer.layers if isinstance(lay, napari.layers.Image)]
        self.layer.addItems(names)
        if current in names:
            self.layer.setCurrentText(current)

    def run(self) -> Any:
        """Start the simulation on a worker thread; returns the worker."""
        from napari.qt.threading import create_worker

        name = self.layer.currentText()
        if not name:
            self.message.setText("no image layer: open or paste an image first")
            return None
        image = np.asarray(self.viewer.layers[name].data)
        self._source = name
        self.run_button.setEnabled(False)
        self.message.setText(f"simulating {self.n_side.value()}² points on {name!r} …")
        self.worker = create_worker(
            simulate_from_image,
            image,
            self.n_side.value(),
            10.0 ** self.photons.value(),
            self.iterations.value(),
        )
        self.worker.returned.connect(self._show)
        self.worker.errored.connect(self._failed)
        self.worker.start()
        return self.worker

    def _show(self, r: dict[str, Any]) -> None:
        """The truth, the frames and the reconstruction in nm; the source image too, at the
        size the simulation took it for (it spans the object grid), so all lie over it and
        napari finds one unit across the layers."""
        from bluesky_ptycho.viewer.model import layer_scale

        px = r["pixel_m"] * 1e9  # nm
        phys = layer_scale(px)
        taken = ""
        if self._source in self.viewer.layers:  # first: napari checks the units at each layer
            source = self.viewer.layers[self._source]
            (ny, nx), (h, w) = r["truth"].shape, source.data.shape[:2]
            source.scale = (1.0,) * (source.ndim - 2) + (ny * px / h, nx * px / w)
            source.units = ("pixel",) * (source.ndim - 2) + phys["units"]
            taken = (
                f"{self._source!r} taken as a {nx * px / 1e3:.3g} × {ny * px / 1e3:.3g} µm sample; "
            )
        self.viewer.add_image(
            np.angle(r["truth"]), name="simulated sample phase", colormap="twilight", **phys
        )
        self.viewer.add_image(  # the frames drawn over their window (model.frame_pixel_nm)
            np.log1p(r["frames"]), name="simulated frames (log)", colormap="magma",
            visible=False, **layer_scale(px, 3),
        )  # fmt: skip
        self.viewer.add_image(
            np.angle(r["object"]), name="reconstruction phase", colormap="twilight", **phys
        )
        self.message.setText(
            f"{taken}{len(r['frames'])} frames; data error {r['errors'][-1]:.3g} after "
            f"{len(r['errors'])} iterations; written to {r['path']}"
        )
        self.run_button.setEnabled(True)

    def _failed(self, err: Exception) -> None:
        self.message.setText(f"simulation failed: {err}")
        self.run_button.setEnabled(True)
