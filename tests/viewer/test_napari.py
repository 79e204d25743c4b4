"""The napari plugin, headless (Xvfb + Mesa's software OpenGL; `make test` starts it).

The RunEngine runs in the main thread, as in the operator's session; its
default during-task spins the Qt event loop while it waits (matplotlib's Qt
backend is selected), so the widget redraws while the scan runs.
"""

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("napari")
if not os.environ.get("DISPLAY") and os.environ.get("QT_QPA_PLATFORM") != "xcb":
    pytest.skip(
        "napari needs a display with OpenGL: run under xvfb-run (make test does; "
        ".ci/run installs the packages)",
        allow_module_level=True,
    )

from bluesky import RunEngine

from bluesky_ptycho.acquisition.plans import ptycho_scan
from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD
from bluesky_ptycho.pipeline.runner import Pipeline
from bluesky_ptycho.viewer import widget as _widget
from bluesky_ptycho.viewer.reader import get_reader
from bluesky_ptycho.viewer.simulate import SimulateWidget
from bluesky_ptycho.viewer.widget import LiveView

N = 49
#: the README's screenshot is refreshed by `BLUESKY_PTYCHO_SCREENSHOT=docs/images make test`
SCREENSHOT_DIR = os.environ.get("BLUESKY_PTYCHO_SCREENSHOT")


@pytest.fixture(autouse=True)
def _qt_during_task():
    import matplotlib

    backend = matplotlib.get_backend()
    matplotlib.use("QtAgg")
    yield
    matplotlib.use(backend)


def _beamline(tmp_path, **params):
    RE = RunEngine({})
    stage, shutter = SampleStage(name="stage"), Shutter(name="shutter")
    fccd = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=tmp_path, defects=None)
    pipe = Pipeline(
        params={
            "reconstruction": {"final_iterations": 20, "snapshot_interval": 0.3},
            "frame_cleaning": {"batch_size": 4},
            **params,
        }
    )
    RE.subscribe(pipe)
    return RE, fccd, stage, shutter, pipe


def _record_refreshes(widget, monkeypatch, during):
    """Call *during(state)* after every redraw the widget does."""
    seen = []
    original = widget.refresh

    def refresh():
        original()
        st = widget.model.take()
        seen.append(st)
        during(st)

    monkeypatch.setattr(widget, "refresh", refresh)
    widget._timer.timeout.disconnect()
    widget._timer.timeout.connect(widget.refresh)
    return seen


@pytest.mark.slow
def test_layers_appear_and_update_while_the_scan_runs(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 1024)
    RE, fccd, stage, shutter, pipe = _beamline(tmp_path, reconstruction={
        "final_iterations": 20, "snapshot_interval": 0.3, "frc_interval": 2.0})  # fmt: skip
    fccd.faults = {10: "corrupt"}
    widget = LiveView(viewer, pipeline=pipe, rate=10)
    viewer.window.add_dock_widget(widget, name="Live ptychography")
    scanning = {"on": False}
    RE.subscribe(lambda n, d: scanning.update(on=n != "stop"))
    shots = []

    def during(st):
        if scanning["on"] and st.n_measured >= N // 2 and st.frc is not None and not shots:
            widget.canvas.draw()  # the curves now, not at the next idle moment
            shot = tmp_path / "live_view.png"
            from imageio.v3 import imwrite

            imwrite(shot, viewer.screenshot(canvas_only=False, flash=False))
            shots.append((shot, st.n_measured))

    seen = _record_refreshes(widget, monkeypatch, during)
    (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=N, num_darks=5, step=100e-9))
    pipe.wait(uid, timeout=120)
    qtbot.waitUntil(lambda: widget.model.take().final, timeout=20000)
    widget.refresh()

    names = {layer.name for layer in viewer.layers}
    assert {
        _widget.OBJECT_PHASE,
        _widget.OBJECT_AMPLITUDE,
        _widget.STXM,
        _widget.PROBE,
        _widget.FRAME,
        _widget.BAD,
        _widget.FRAME_ERRORS,
    } <= names
    # every image in nm, side by side without overlapping, a scale bar, the view fitted
    pixel_nm = pipe.runs[uid]["reconstruction"].result.grid.pixel_size_m * 1e9
    assert viewer.layers[_widget.OBJECT_PHASE].scale[-1] == pytest.approx(pixel_nm)
    assert viewer.canvas.overlays.scale_bar.visible
    assert all(str(u) == "nanometer" for u in viewer.layers[_widget.OBJECT_PHASE].units)
    assert viewer.layers[_widget.OBJECT_PHASE].colormap.name == "twilight"  # cyclic
    panels = [_widget.OBJECT_PHASE, _widget.OBJECT_AMPLITUDE, _widget.PROBE, _widget.FRAME,
              _widget.STXM, _widget.FRAME_ERRORS]  # fmt: skip
    boxes = [np.asarray(viewer.layers[n].extent.world)[:, -2:] for n in panels]
    for i, a in enumerate(boxes):  # no two panels overlap
        for b in boxes[i + 1 :]:
            assert (a[1] <= b[0]).any() or (b[1] <= a[0]).any(), (a, b)
    canvas = viewer.window._qt_viewer.canvas.size
    zoom = viewer.camera.zoom  # screen px per nm: the whole layout fits, and fills the canvas
    extent = np.ptp(np.asarray(viewer.layers.extent.world)[:, -2:], axis=0)
    assert max(extent[0] * zoom / canvas[0], extent[1] * zoom / canvas[1]) > 0.6
    # the FRC of the halves, beside the error curve, and in the result
    assert len(widget.frc_curve.get_xdata()) > 5 and "nm" in widget.frc_axes.get_title()
    assert np.isfinite(pipe.runs[uid]["reconstruction"].result.frc_resolution_m)
    # the object was redrawn several times while frames were still coming in
    live = sorted({st.n_measured for st in seen if st.object is not None and not st.final})
    assert len(live) >= 2 and live[0] < N, live
    result = pipe.runs[uid]["reconstruction"].result
    assert viewer.layers[_widget.OBJECT_PHASE].data.shape == result.object.shape
    assert viewer.layers[_widget.PROBE].data.ndim == 3
    assert len(widget.curve.get_xdata()) >= 20
    log = widget.log_view.toPlainText()
    assert "point 10 bad" in log and "final image" in log
    # the screenshot taken mid-scan
    assert shots and shots[0][0].stat().st_size > 10_000
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy(shots[0][0], Path(SCREENSHOT_DIR) / "live_view.png")
    widget.close_view()
    pipe.close()


def test_controls_set_parameters_refuse_bad_ones_and_reset(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    pipe = Pipeline()
    widget = LiveView(viewer, pipeline=pipe)
    widget.param.setText("reconstruction.final_iterations=7")
    widget.apply_button.click()
    assert pipe.spec.stages["reconstruction"].params["final_iterations"] == 7
    widget.param.setText("reconstruction.final_iteratoins=7")
    widget.apply_button.click()
    widget.reset_button.click()
    assert pipe.spec.stages["reconstruction"].params["final_iterations"] == 40
    widget.status_button.click()
    log = widget.model.take().log
    assert "reconstruction.final_iterations: from the next run" in log[0]
    assert "refused" in log[1] and "final_iteratoins" in log[1]
    assert "pipeline reset" in log[2]
    assert "in-process" in log[3]
    widget.close_view()
    pipe.close()


@pytest.mark.slow
def test_abort_button_stops_the_pipeline_and_the_scan_goes_on(
    make_napari_viewer, tmp_path, monkeypatch
):
    viewer = make_napari_viewer()
    RE, fccd, stage, shutter, pipe = _beamline(tmp_path)
    widget = LiveView(viewer, pipeline=pipe, rate=10)
    clicked = []

    def during(st):
        if st.n_measured >= 16 and not clicked:
            clicked.append(st.n_measured)
            widget.abort_button.click()

    _record_refreshes(widget, monkeypatch, during)
    docs = []
    RE.subscribe(lambda n, d: docs.append(n))
    (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=N, num_darks=5))
    assert clicked
    assert docs.count("event") == N + 5  # the scan itself was not touched
    run = pipe.runs[uid]
    assert run.wait(30)
    assert run["reconstruction"].status()["state"] == "aborted"
    assert any("aborted 1 run(s)" in line for line in widget.model.take().log)
    pipe.close()


@pytest.mark.slow
def test_a_closed_or_crashing_viewer_never_disturbs_the_scan_or_the_pipeline(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    viewer = make_napari_viewer()
    RE, fccd, stage, shutter, pipe = _beamline(tmp_path)
    crashing = LiveView(viewer, pipeline=pipe, rate=10)
    closing = LiveView(viewer, pipeline=pipe, rate=10)
    viewer.window.add_dock_widget(closing)
    after = []
    pipe.subscribe(lambda n, d: after.append(n))  # subscribed after both viewers

    def boom():
        raise RuntimeError("the viewer crashed")

    crashing.model.on_change = boom  # every document it gets raises in the pipeline's thread
    closed = []

    def during(st):
        if st.n_measured >= 10 and not closed:
            viewer.window.remove_dock_widget(closing)
            closing.close()
            closed.append(st.n_measured)

    _record_refreshes(closing, monkeypatch, during)
    (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=N, num_darks=5))
    run = pipe.wait(uid, timeout=120)
    assert closed
    assert all(not e for e in run.errors.values()), run.errors
    assert run["reconstruction"].result is not None
    assert run["reconstruction"].result.weights.sum() == N
    # the subscriber after the crashing viewer got every document (6 derived runs' starts)
    assert after.count("start") == 5 and after.count("stop") == 5
    assert closing.model not in pipe._subscribers and closing.model.on_change is None
    pipe.close()


def test_reader_opens_our_cxi_ptychodus_and_ptypy_files(tmp_path):
    from bluesky_ptycho.io.cxi import CxiData, write_cxi

    rng = np.random.default_rng(0)
    obj = np.exp(1j * rng.uniform(-1, 1, (80, 90))).astype(np.complex64)
    probe = (rng.normal(size=(32, 32)) + 1j).astype(np.complex64)
    frames = rng.poisson(5, (4, 32, 32)).astype(np.float32)
    cxi = write_cxi(
        tmp_path / "scan.cxi",
        CxiData(
            frames=frames,
            translations_m=np.zeros((4, 3)),
            energy_ev=800.0,
            distance_m=0.08,
            pixel_size_m=(30e-6, 30e-6),
            probe=probe,
            object=obj,
            object_pixel_size_m=7e-9,
        ),
    )
    layers = get_reader(str(cxi))(str(cxi))
    by_name = {meta["name"]: (data, meta) for data, meta, _ in layers}
    assert np.allclose(by_name["scan object phase"][0], np.angle(obj))
    assert by_name["scan object phase"][1]["scale"] == pytest.approx((7, 7))
    assert by_name["scan probe modes"][0].shape == (1, 32, 32)
    assert by_name["scan frames (log)"][0].shape == (4, 32, 32)

    with h5py.File(tmp_path / "product.h5", "w") as f:  # ptychodus' product layout
        f.create_dataset("object", data=obj[None])
        f["object"].attrs["pixel_height_m"] = 5e-9
        f.create_dataset("probe", data=np.stack([probe, probe / 2]))
        f.create_dataset("probe_position_x_m", data=np.zeros(4))
    layers = get_reader(str(tmp_path / "product.h5"))(str(tmp_path / "product.h5"))
    assert {m["name"] for _, m, _ in layers} == {
        "product object phase",
        "product object amplitude",
        "product probe modes",
    }
    assert layers[0][1]["scale"] == pytest.approx((5, 5)) and layers[2][0].shape == (2, 32, 32)

    with h5py.File(tmp_path / "recon.ptyr", "w") as f:  # ptypy's result layout
        f.create_dataset("content/obj/S00G00/data", data=obj[None])
        f.create_dataset("content/obj/S00G00/_psize", data=np.array([6e-9, 6e-9]))
        f.create_dataset("content/probe/S00G00/data", data=probe[None])
    layers = get_reader(str(tmp_path / "recon.ptyr"))(str(tmp_path / "recon.ptyr"))
    assert np.allclose(layers[1][0], np.abs(obj)) and layers[0][1]["scale"] == pytest.approx((6, 6))

    (tmp_path / "other.h5").write_bytes(b"")  # not HDF5: not ours
    assert get_reader(str(tmp_path / "other.h5")) is None
    with h5py.File(tmp_path / "unrelated.h5", "w") as f:
        f.create_dataset("x", data=[1])
    assert get_reader(str(tmp_path / "unrelated.h5")) is None


def _cxi_file(path):
    """A CXI file as the pipeline writes it: frames, probe and object of one geometry."""
    from bluesky_ptycho.core.geometry import Geometry
    from bluesky_ptycho.io.cxi import CxiData, write_cxi

    g = Geometry(crop_px=64, frame_px=32)
    obj = np.exp(1j * np.linspace(-1, 1, 96 * 80).reshape(96, 80)).astype(np.complex64)
    return g, write_cxi(
        path,
        CxiData(
            frames=np.ones((3, 32, 32), np.float32),
            translations_m=np.zeros((3, 3)),
            energy_ev=g.energy_ev,
            distance_m=g.distance_m,
            pixel_size_m=(g.frame_pixel_size_m,) * 2,
            probe=np.ones((32, 32), np.complex64),
            object=obj,
            object_pixel_size_m=g.object_pixel_size_m,
        ),
    )


@pytest.fixture
def notices():
    """What napari notifies (its warnings go to the notification manager, not `warnings`)."""
    from napari.utils.notifications import notification_manager

    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


def _unit_warnings(viewer, notices):
    """Draw the canvas (napari checks the layers' units as it draws): napari's notices about
    units so far."""
    viewer.screenshot(canvas_only=True, flash=False)
    return {str(n.message) for n in notices if "units" in str(n.message).lower()}


def test_napari_picks_our_reader_for_cxi_files_by_itself(make_napari_viewer, tmp_path, notices):
    """``plugin=None`` is what `napari scan_1.cxi`, File > Open and drag-and-drop do: napari
    chooses the reader by the file's pattern, and ours is the one for *.cxi. (A bare
    ``viewer.open(path)`` means ``plugin="napari"`` in napari >= 0.5: its built-in readers
    only, which know no CXI.)"""
    from napari.settings import get_settings

    g, path = _cxi_file(tmp_path / "scan_1.cxi")
    assert "*.cxi" not in get_settings().plugins.extension2reader  # no preference needed
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin=None)
    assert [layer.name for layer in layers] == [
        "scan_1 object phase",
        "scan_1 object amplitude",
        "scan_1 probe modes",
        "scan_1 frames (log)",
    ]
    assert {layer.source.reader_plugin for layer in layers} == {"bluesky_ptycho"}
    # every layer in nm: object and probe at the object's pixel, the frames over their window
    px = g.object_pixel_size_m * 1e9
    for layer in layers:
        assert [str(u) for u in layer.units[-2:]] == ["nanometer", "nanometer"], layer.name
        assert tuple(layer.scale[-2:]) == pytest.approx((px, px)), layer.name
    frames = viewer.layers["scan_1 frames (log)"]
    assert frames.metadata["frequency_step_per_nm"] == pytest.approx(1 / (32 * px))
    assert [str(u) for u in viewer.layers.units[-2:]] == ["nanometer", "nanometer"]
    assert _unit_warnings(viewer, notices) == set()


def test_every_layer_has_its_scale_in_nm_and_napari_finds_one_unit(
    make_napari_viewer, tmp_path, notices
):
    """The live view's layers (from a stage's documents) beside a file's: one unit, a scale
    bar in nm, no "Inconsistent units across layers"."""
    viewer = make_napari_viewer(show=True)
    widget = LiveView(viewer)
    px_m, frame = 10e-9, 32
    rng = np.random.default_rng(1)
    widget.model(
        "start",
        {"uid": "r1", "source_run": "raw1", "scan_id": 1, "ptycho": {"frame_px": frame},
         "object_grid": {"pixel_size_m": px_m, "origin_m": (-0.5e-6, -0.5e-6)}},
    )  # fmt: skip
    obj = np.exp(1j * rng.uniform(-1, 1, (120, 120))).astype(np.complex64)
    probe = np.ones((2, frame, frame), np.complex64)
    widget.model(
        "event", {"data": {"object": obj, "probe": probe, "iteration": 3, "n_measured": 9}}
    )
    widget.model("event", {"data": {"frame": np.ones((frame, frame)), "valid": True, "point": 8}})
    for k, (x, y) in enumerate(rng.uniform(-0.4e-6, 0.4e-6, (9, 2))):
        widget.model(
            "event", {"data": {"dpc_x": 0.0, "photons": 1e4 + k, "point": k, "x": x, "y": y}}
        )
    widget.model("event", {"data": {"bad": True, "reason": "low flux", "point": 2, "x": 0.1e-6,
                                    "y": 0.2e-6}})  # fmt: skip
    widget.refresh()
    _g, path = _cxi_file(tmp_path / "scan_1.cxi")
    viewer.open(str(path), plugin="bluesky_ptycho")

    for name in (_widget.OBJECT_PHASE, _widget.OBJECT_AMPLITUDE, _widget.PROBE, _widget.FRAME):
        assert viewer.layers[name].scale[-1] == pytest.approx(px_m * 1e9), name
    assert viewer.layers[_widget.PROBE].ndim == 3  # modes, then nm
    for layer in viewer.layers:
        assert [str(u) for u in layer.units[-2:]] == ["nanometer", "nanometer"], layer.name
    assert [str(u) for u in viewer.layers.units] == ["pixel", "nanometer", "nanometer"]
    assert viewer.canvas.overlays.scale_bar.visible
    assert _unit_warnings(viewer, notices) == set()
    # the check can fail: one layer left in pixels, and napari says so
    viewer.add_image(np.zeros((4, 4)), name="in pixels")
    assert _unit_warnings(viewer, notices) == {
        "Inconsistent units across layers; units will not be used for rendering."
    }
    widget.close_view()


def test_simulate_widget_makes_and_reconstructs_an_experiment_from_an_image(
    make_napari_viewer, qtbot, notices
):
    viewer = make_napari_viewer()
    yy, xx = np.mgrid[:200, :200]
    sem = ((np.sin(xx / 9.0) * np.cos(yy / 13.0)) > 0.2).astype(np.float32)  # a test picture
    viewer.add_image(sem, name="SEM")
    widget = SimulateWidget(viewer)
    assert widget.layer.currentText() == "SEM"
    widget.n_side.setValue(6)
    widget.iterations.setValue(10)
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=120000):
        pass
    qtbot.waitUntil(lambda: "reconstruction phase" in viewer.layers, timeout=5000)
    assert "simulated sample phase" in viewer.layers and "written to" in widget.message.text()
    path = Path(widget.message.text().rsplit("written to ", 1)[1])
    assert get_reader(str(path)) is not None

    # the picture taken as a sample the size of the object grid: it lies under the truth, in nm
    def span(layer):
        return np.array(layer.data.shape[-2:]) * layer.scale[-2:]

    assert np.allclose(span(viewer.layers["SEM"]), span(viewer.layers["simulated sample phase"]))
    assert "'SEM' taken as a" in widget.message.text()
    assert [str(u) for u in viewer.layers.units] == ["pixel", "nanometer", "nanometer"]
    assert _unit_warnings(viewer, notices) == set()
