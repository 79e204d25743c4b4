"""The live dock widget (Qt). Documents never touch Qt on their own thread.

The :class:`~.model.LiveModel` takes documents on whatever thread brings
them and emits :attr:`LiveView.changed`; Qt queues that signal to the GUI
thread, where a single-shot timer draws at most ``rate`` times a second,
updating layers in place. A slow or closed viewer never holds the documents
up: the model keeps only the latest of each thing, and closing the widget
unsubscribes it.
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

from bluesky_ptycho.viewer.model import Controls, LiveModel, stxm_image

if TYPE_CHECKING:
    import napari

log = logging.getLogger("bluesky_ptycho.viewer")

#: layer names the widget owns (updated in place)
OBJECT_PHASE, OBJECT_AMPLITUDE = "object phase", "object amplitude"
STXM, PROBE, FRAME, BAD = "STXM", "probe modes", "cleaned frame (log)", "bad points"


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
        self.address.setToolTip("results address of `bluesky-ptycho serve` (its --snapshot-port)")
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
        self.figure = Figure(figsize=(4, 2.2), tight_layout=True)
        self.axes = self.figure.add_subplot(111)
        self.axes.set_xlabel("iteration")
        self.axes.set_ylabel("data error")
        (self.curve,) = self.axes.semilogy([], [], lw=1)
        self.canvas = FigureCanvasQTAgg(self.figure)
        lay.addWidget(self.canvas)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(1000)
        lay.addWidget(self.log_view)

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
        if st.object is not None:
            self._image(OBJECT_PHASE, np.angle(st.object).astype(np.float32), colormap="twilight")
            self._image(OBJECT_AMPLITUDE, np.abs(st.object).astype(np.float32), colormap="gray")
        if st.probe is not None:
            self._image(
                PROBE,
                np.abs(np.asarray(st.probe).reshape(-1, *st.probe.shape[-2:])),
                colormap="viridis",
            )
        if st.frame is not None:
            self._image(FRAME, np.log1p(np.maximum(st.frame, 0)), colormap="magma")
        if len(st.stxm) >= 2:
            img, (x0, y0), px = stxm_image(st.stxm)  # its own pixels (px m each) from (x0, y0)
            self._image(STXM, img, colormap="gray")
            bad = (st.bad[:, ::-1] - [y0, x0]) / px if len(st.bad) else np.zeros((0, 2))
            self._points(bad)
        if len(st.errors):
            self.curve.set_data(np.arange(1, len(st.errors) + 1), st.errors)
            self.axes.relim()
            self.axes.autoscale_view()
            self.canvas.draw_idle()
        shown = "\n".join(st.log[-200:])
        if shown != self.log_view.toPlainText():
            self.log_view.setPlainText(shown)
            self.log_view.verticalScrollBar().setValue(self.log_view.verticalScrollBar().maximum())
        what = "final image" if st.final else "live"
        self.state.setText(
            f"{what}: iteration {st.iteration}, {st.n_measured} frames, {len(st.bad)} bad point(s)"
        )

    def _image(self, name: str, data: np.ndarray, **kwargs: Any) -> None:
        if name in self.viewer.layers:
            self.viewer.layers[name].data = data
        else:
            self.viewer.add_image(data, name=name, **kwargs)
            self.viewer.grid.enabled = True  # side by side, as Nanosurveyor's GUI showed them

    def _points(self, yx: np.ndarray) -> None:
        """Bad points over the STXM image (in its pixels)."""
        if BAD in self.viewer.layers:
            self.viewer.layers[BAD].data = yx
        else:
            self.viewer.add_points(yx, name=BAD, size=4, face_color="red", opacity=0.7)

    def closeEvent(self, event: Any) -> None:
        self.close_view()
        super().closeEvent(event)

    def close_view(self) -> None:
        """Stop following (the pipeline goes on without the viewer)."""
        self.model.on_change = None
        self._timer.stop()
        self._detach()
