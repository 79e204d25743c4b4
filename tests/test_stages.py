"""The stages on synthetic document streams (compose_run, no RunEngine) and on a real scan."""

import numpy as np
import pytest
from event_model import DocumentNames, compose_run, schema_validators

from bluesky_ptycho.callbacks.pipeline import Pipeline
from bluesky_ptycho.core import fccd, sim
from bluesky_ptycho.core.geometry import Geometry, ZonePlate


def _synthetic_run(num_points=40, bad=None):
    """A raw ptycho run with frames inline in the events, and some planted bad frames."""
    bad = bad or {}
    g = Geometry()
    rng = np.random.default_rng(0)
    noise = sim.FCCDNoiseModel.for_energy(g.energy_ev)
    sample = sim.SimulatedSample(g, ZonePlate(), scan_extent_m=2e-6)
    pos = sim.fermat_positions(num_points, 100e-9)
    md = {
        "ptycho": {
            "energy_ev": g.energy_ev,
            "distance_m": g.distance_m,
            "pixel_size_m": g.pixel_size_m,
            "crop_px": g.crop_px,
            "frame_px": g.frame_px,
            "adu_per_photon": noise.adu_per_photon,
            "pattern": "fermat",
            "num_points": num_points,
            "num_darks": 3,
            "positions_m": pos.tolist(),
            "image_key": "fccd_image",
            "x_key": "stage_x",
            "y_key": "stage_y",
            "zone_plate": ZonePlate().as_dict(),
        }
    }
    run = compose_run(metadata=md)
    yield "start", run.start_doc
    key = {"source": "sim", "dtype": "array", "shape": list(fccd.RAW_SHAPE)}
    dark = run.compose_descriptor(name="dark", data_keys={"fccd_image": key})
    yield "descriptor", dark.descriptor_doc
    for _ in range(3):
        f = noise.raw_frame(rng)
        yield "event", dark.compose_event(data={"fccd_image": f}, timestamps={"fccd_image": 0})
    num = {"source": "sim", "dtype": "number", "shape": []}
    prim = run.compose_descriptor(
        name="primary", data_keys={"fccd_image": key, "stage_x": num, "stage_y": num}
    )
    yield "descriptor", prim.descriptor_doc
    for i, (x, y) in enumerate(pos):
        frame = bad[i] if i in bad else noise.raw_frame(rng, sample.intensity((x, y), 1e6))
        yield (
            "event",
            prim.compose_event(
                data={"fccd_image": frame, "stage_x": x, "stage_y": y},
                timestamps={"fccd_image": 0, "stage_x": 0, "stage_y": 0},
                validate=False,
            ),
        )
    yield "stop", run.compose_stop()


def test_bad_frames_are_flagged_and_the_run_goes_on(tmp_path):
    nan_frame = np.full(fccd.RAW_SHAPE, 4100.0)
    nan_frame[100:110, 200:300] = np.nan
    bad = {5: np.zeros((100, 100), np.uint16), 11: nan_frame}
    pipe = Pipeline(output_dir=tmp_path, reconstruction={"final_epochs": 3, "min_frames": 4})
    out = []
    pipe.subscribe(lambda n, d: out.append((n, d)))
    uid = None
    for name, doc in _synthetic_run(bad=bad):
        uid = uid or doc["uid"]
        pipe(name, doc)
    run = pipe.wait(uid, timeout=120)
    assert run.errors == {"dark_statistics": [], "frame_cleaning": [], "reconstruction": []}
    r = run.recon.result
    assert set(r.flags) == {5, 11}
    assert "wrong shape (100, 100)" in r.flags[5] and "non-finite" in r.flags[11]
    assert r.weights[5] == 0 and r.weights[11] == 0 and r.weights.sum() == 38
    assert r.epochs >= 3 and np.isfinite(r.object).all()
    cleaned = [d for n, d in out if n == "event" and "frame" in d["data"]]
    assert len(cleaned) == 40  # flagged frames are passed on, not dropped
    assert run.export.path.exists()
    for name, doc in out:
        schema_validators[DocumentNames(name)].validate(doc)


def test_dark_stage_matches_numpy():
    from bluesky_ptycho.callbacks.dark import DarkStatistics

    stage = DarkStatistics()
    frames = []
    for name, doc in _synthetic_run(num_points=2):
        if name == "event" and len(frames) < 3:
            frames.append(np.asarray(doc["data"]["fccd_image"], np.float64))
        stage(name, doc)
    assert stage.join(60)
    ref = np.stack(frames)
    np.testing.assert_allclose(stage.result.mean, ref.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stage.result.std, ref.std(0, ddof=1), rtol=1e-4, atol=1e-3)


def test_unknown_stage_is_named():
    from bluesky_ptycho.plugins import load_stage

    with pytest.raises(LookupError, match=r"no stage named 'nope'.*frame_cleaning"):
        load_stage("nope")
