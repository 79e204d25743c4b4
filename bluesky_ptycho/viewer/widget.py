"""The live dock widget (Qt). Documents never touch Qt on their own thread.

The :class:`~.model.LiveModel` takes documents on whatever thread brings
them and emits :attr:`LiveView.changed`; Qt queues that signal to the GUI
thread, where a single-shot timer draws at most ``rate`` times a second,
updating layers in place. A slow or closed viewer never holds the documents
up: the model keeps only the latest of each thing, and closing the widget
unsubscribes it.

Every layer is in nm (napari's ``scale`` and ``units``, one unit across all of
them, so napari's scale bar reads nm): the object, the probe, the STXM image and
the per-frame error map at their pixel sizes, laid out side by side in one
world. The cleaned frame (detector space) is drawn with the object's pixel, so
it covers the probe window whose far field it is, beside the probe
(:func:`~bluesky_ptycho.viewer.model.frame_pixel_nm` says why).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from bluesky_ptycho.viewer.model import LENGTH_UNIT, Controls, LiveModel, layer_scale, stxm_image

if TYPE_CHECKING:
    import napari

log = logging.getLogger("bluesky_ptycho.viewer")

#: layer names the widget owns (updated in place)
OBJECT_PHASE, OBJECT_AMPLITUDE = "object phase", "object amplitude"
STXM, PROBE, FRAME, BAD = "STXM", "probe modes", "cleaned frame (log)", "bad points"
FRAME_ERRORS = "data error per frame"
#: space between the panels, as a fraction of the object's side
GAP = 0.04


class LiveView(QWidget):
    """Live ptychography: follow a pipeline in this process or a back-end's results.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    pipeline : Pipeline, optional
        Follow this in-process pipeline (the IPython profile's ``pipeline``).
    results : str, optional
        Or a back-end's results address (``tcp://host:5579``) ...
    control : str, optional
        ... and its control address (``tcp://host:5578``) for the buttons.
    keys : path-like, optional
        CURVE key folder of that back-end.
    rate : float
        Redraws per second at most.
    """

    changed = Signal()

    def __init__(
        self,
        napari_viewer: napari.Viewer,
        pipeline: Any = None,
        results: str | None = None,
        control: str | None = None,
        keys: Any = None,
        rate: float = 5.0,
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model = LiveModel(on_change=self.changed.emit)
        self.controls: Controls | None = None
        self._source: Any = None
        self._subscriber: Any = None
        self._shown = -1
        self._extent: np.ndarray | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(1000 / rate))
        self._timer.timeout.connect(self.refresh)
        self.changed.connect(self._schedule)
        self._build()
        if pipeline is not None:
            self.follow_pipeline(pipeline)
        elif results is not None:
            self.follow_backend(results, control, keys)

    # -- layout ------------------------------------------------------------------------
    def _build(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        lay = QVBoxLayout(self)
        row = QHBoxLayout()
        self.address = QLineEdit("tcp://127.0.0.1:5579")
        self.address.setToolTip("results address of `bluesky-ptycho serve` (its --results)")
        self.connect_button = QPushButton("Follow back-end")
        self.connect_button.clicked.connect(self._follow_clicked)
        row.addWidget(self.address)
        row.addWidget(self.connect_button)
        lay.addLayout(row)
        self.state = QLabel("not following a pipeline")
        lay.addWidget(self.state)
        row = QHBoxLayout()
        self.abort_button = QPushButton("Abort")
        self.reset_button = QPushButton("Reset")
        self.status_button = QPushButton("Status")
        self.abort_button.clicked.connect(lambda: self._act(lambda c: c.abort()))
        self.reset_button.clicked.connect(lambda: self._act(lambda c: c.reset()))
        self.status_button.clicked.connect(self._status)
        for b in (self.abort_button, self.reset_button, self.status_button):
            row.addWidget(b)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.param = QLineEdit()
        self.param.setPlaceholderText("stage.key=value, e.g. reconstruction.final_iterations=80")
        self.apply_button = QPushButton("Set")
        self.apply_button.clicked.connect(lambda: self._act(lambda c: c.set(self.param.text())))
        self.param.returnPressed.connect(self.apply_button.click)
        row.addWidget(self.param)
        row.addWidget(self.apply_button)
        lay.addLayout(row)
        self.figure = Figure(figsize=(4.0, 2.0), tight_layout=True)
        self.axes = self.figure.add_subplot(121)
        self.axes.set_xlabel("iteration")
        self.axes.set_ylabel("data error")
        (self.curve,) = self.axes.semilogy([], [], lw=1)
        self.frc_axes = self.figure.add_subplot(122)
        self.frc_axes.set_xlabel("spatial frequency (1/nm)")
        self.frc_axes.set_ylabel("FRC (halves)")
        (self.frc_curve,) = self.frc_axes.plot([], [], lw=1, label="FRC")
        (self.frc_threshold,) = self.frc_axes.plot([], [], lw=1, ls="--", label="half-bit")
        self.frc_axes.set_ylim(0, 1.05)
        self.frc_axes.set_title("no FRC yet", fontsize=8)
        self.canvas = FigureCanvasQTAgg(self.figure)
        lay.addWidget(self.canvas)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(1000)
        lay.addWidget(self.log_view)
        self.setMaximumWidth(400)  # the canvas gets the rest of the window

    # -- sources -----------------------------------------------------------------------------
    def follow_pipeline(self, pipeline: Any) -> None:
        """Show what *pipeline* (in this process) produces; the buttons act on it."""
        self._detach()
        pipeline.subscribe(self.model)
        self._source = pipeline
        self.controls = Controls(pipeline=pipeline)
        self.state.setText("following the pipeline in this process")

    def follow_backend(self, results: str, control: str | None = None, keys: Any = None) -> None:
        """Show a back-end's published results; the buttons use its control channel."""
        from bluesky_ptycho.transport.snapshots import SnapshotSubscriber

        self._detach()
        self._subscriber = SnapshotSubscriber(results, keys)
        self._subscriber.subscribe(self.model)
        self._source = self._subscriber
        if control is None:
            host, _, port = results.rpartition(":")
            control = f"{host}:{int(port) - 1}"  # serve's default ports: control = results - 1
        self.controls = Controls(control=control, keys=keys)
        self.address.setText(results)
        self.state.setText(f"following the back-end at {results} (control {control})")

    def _follow_clicked(self) -> None:
        try:
            self.follow_backend(self.address.text().strip())
        except Exception as err:
            self.model.log(f"cannot follow {self.address.text()!r}: {err}")

    def _detach(self) -> None:
        if self._source is not None and hasattr(self._source, "unsubscribe"):
            self._source.unsubscribe(self.model)
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None
        self._source = None

    # -- controls ---------------------------------------------------------------------------
    def _act(self, action: Any) -> None:
        if self.controls is None:
            self.model.log("follow a pipeline or a back-end first")
            return
        try:
            self.model.log(action(self.controls))
        except Exception as err:  # a refused parameter, a back-end that does not answer
            self.model.log(f"refused: {err}")

    def _status(self) -> None:
        self._act(lambda c: c.status())

    # -- drawing (GUI thread) ------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def refresh(self) -> None:
        """Draw the model's latest state (called at most ``rate`` times a second)."""
        st = self.model.take()
        if st.version == self._shown:
            return
        self._shown = st.version
        px = st.pixel_nm if np.isfinite(st.pixel_nm) else 1.0
        grown = False
        if st.object is not None:
            cells = self._layout(st.object.shape, st.probe, px)
            phase = np.angle(st.object).astype(np.float32)
            grown |= self._image(OBJECT_PHASE, phase, cells["phase"], px, colormap="twilight")
            # a cyclic map over the phase the object spans (±π once it wraps)
            core = phase[phase.shape[0] // 4 : -phase.shape[0] // 4 or None,
                         phase.shape[1] // 4 : -phase.shape[1] // 4 or None]  # fmt: skip
            lo, hi = np.percentile(core, [1, 99]) if core.size else (-np.pi, np.pi)
            if hi > lo:
                self.viewer.layers[OBJECT_PHASE].contrast_limits = (float(lo), float(hi))
            grown |= self._image(OBJECT_AMPLITUDE, np.abs(st.object).astype(np.float32),
                                 cells["amplitude"], px, colormap="gray")  # fmt: skip
            if st.probe is not None:
                probe = np.abs(np.asarray(st.probe).reshape(-1, *st.probe.shape[-2:]))
                grown |= self._image(PROBE, probe, cells["probe"], px, colormap="viridis")
            if st.frame is not None:
                grown |= self._image(FRAME, np.log1p(np.maximum(st.frame, 0)), cells["frame"], px,
                                     colormap="magma")  # fmt: skip
            for name, points, cell in ((STXM, st.stxm, "stxm"),
                                       (FRAME_ERRORS, st.frame_errors, "errors")):  # fmt: skip
                if len(points) >= 2:
                    img, (x0, y0), step = stxm_image(points)
                    # in its cell where the object shows the same part of the sample
                    at = (cells[cell][0] + y0 * 1e9 - st.origin_nm[1],
                          cells[cell][1] + x0 * 1e9 - st.origin_nm[0])  # fmt: skip
                    cmap = "gray" if name == STXM else "inferno"
                    grown |= self._image(name, img, at, step * 1e9, colormap=cmap)
                    if name == STXM:
                        bad = st.bad[:, ::-1] * 1e9 - [y0 * 1e9, x0 * 1e9] + at
                        self._points(bad if len(st.bad) else np.zeros((0, 2)))
        extent = np.asarray(self.viewer.layers.extent.world)[:, -2:]
        if grown and (self._extent is None or not np.allclose(extent, self._extent)):
            self._extent = extent
            self.viewer.reset_view()  # fit the view to the data as it grows
        if len(st.errors):
            self.curve.set_data(np.arange(1, len(st.errors) + 1), st.errors)
            self.axes.relim()
            self.axes.autoscale_view()
        if st.frc is not None:
            f = np.asarray(st.frc["frequency_per_nm"])
            self.frc_curve.set_data(f, st.frc["correlation"])
            self.frc_threshold.set_data(f, st.frc["half_bit"])
            self.frc_axes.set_xlim(0, float(f.max()) if len(f) else 1)
            self.frc_axes.set_title(
                f"resolution {float(st.frc['resolution_nm']):.3g} nm "
                f"(iteration {int(st.frc['iteration'])})",
                fontsize=8,
            )
        if len(st.errors) or st.frc is not None:
            self.canvas.draw_idle()
        shown = "\n".join(st.log[-200:])
        if shown != self.log_view.toPlainText():
            self.log_view.setPlainText(shown)
            bar = self.log_view.verticalScrollBar()
            if bar is not None:  # (a text view always has one; PyQt's stubs allow None)
                bar.setValue(bar.maximum())
        what = "final image" if st.final else "live"
        self.state.setText(
            f"{what}: iteration {st.iteration}, {st.n_measured} frames, {len(st.bad)} bad point(s)"
        )

    def _layout(self, shape: tuple, probe: Any, px: float) -> dict[str, tuple[float, float]]:
        """Top-left corners (row, column, nm) of the panels: object phase and amplitude, the
        probe and the frame, the STXM image and the per-frame data error, in two rows of
        three on a wide canvas or three rows of two on a tall one (whichever shows them
        larger)."""
        h, w = shape[0] * px, shape[1] * px
        side = (probe.shape[-1] if probe is not None else 0) * px
        gap = GAP * max(h, w)
        canvas = self._canvas_size()
        wide = {  # the probe over the frame in the third column
            "phase": (0.0, 0.0),
            "amplitude": (0.0, w + gap),
            "probe": (0.0, 2 * (w + gap)),
            "frame": (side + gap, 2 * (w + gap)),
            "stxm": (h + gap, 0.0),
            "errors": (h + gap, w + gap),
        }
        tall = {  # the probe beside the frame in the third row
            "phase": (0.0, 0.0),
            "amplitude": (0.0, w + gap),
            "stxm": (h + gap, 0.0),
            "errors": (h + gap, w + gap),
            "probe": (2 * (h + gap), 0.0),
            "frame": (2 * (h + gap), w + gap),
        }
        wide_size = (2 * h + gap, 2 * (w + gap) + side)
        tall_size = (2 * (h + gap) + side, 2 * w + gap)
        zoom_wide = min(canvas[0] / wide_size[0], canvas[1] / wide_size[1])
        zoom_tall = min(canvas[0] / tall_size[0], canvas[1] / tall_size[1])
        return wide if zoom_wide >= zoom_tall else tall

    def _canvas_size(self) -> tuple[int, int]:
        """(height, width) of napari's canvas in screen pixels ((1, 1) when it is not known)."""
        try:
            h, w = self.viewer.window._qt_viewer.canvas.size
            return int(h), int(w)
        except Exception:  # a viewer without a window (headless model), or napari changed
            return 1, 1

    def _image(self, name: str, data: np.ndarray, at: tuple, scale: float, **kwargs: Any) -> bool:
        """Show *data* at *at* (nm) with pixels of *scale* nm; True when the layout changed."""
        physical = layer_scale(scale, data.ndim)
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            changed = layer.data.shape != data.shape or tuple(layer.translate[-2:]) != tuple(at)
            layer.data = data
            layer.scale = physical["scale"]
            layer.translate = (0,) * (data.ndim - 2) + tuple(at)
            return changed
        self.viewer.add_image(
            data, name=name, translate=(0,) * (data.ndim - 2) + tuple(at), **physical, **kwargs
        )
        overlays = self.viewer.canvas.overlays
        self.viewer.canvas.grid.enabled = False  # the panels are laid out side by side, in nm
        overlays.scale_bar.visible = True  # in the layers' unit, nm
        overlays.text.visible = True
        overlays.text.font_size = 8
        overlays.text.text = (
            "phase | amplitude | probe, frame | STXM (bad red) | data error per frame"
        )
        return True

    def _points(self, yx: np.ndarray) -> None:
        """Bad points over the STXM image (nm, in its panel)."""
        if BAD in self.viewer.layers:
            self.viewer.layers[BAD].data = yx
        else:
            self.viewer.add_points(yx, name=BAD, size=4 * max(1.0, self._point_size()),
                                   face_color="red", opacity=0.8, units=(LENGTH_UNIT,) * 2)  # fmt: skip

    def _point_size(self) -> float:
        if STXM in self.viewer.layers:
            return float(self.viewer.layers[STXM].scale[-1])
        return 1.0

    def closeEvent(self, event: Any) -> None:
        self.close_view()
        super().closeEvent(event)

    def close_view(self) -> None:
        """Stop following (the pipeline goes on without the viewer)."""
        self.model.on_change = None
        self._timer.stop()
        self._detach()
