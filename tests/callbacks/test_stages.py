"""The stages on synthetic document streams (compose_run, no RunEngine) and on a real scan."""

import numpy as np
import pytest
from event_model import DocumentNames, compose_run, schema_validators

from bluesky_ptycho.core import fccd, sim
from bluesky_ptycho.core.geometry import Geometry, ZonePlate
from bluesky_ptycho.pipeline.files import PipelineFileError
from bluesky_ptycho.pipeline.runner import Pipeline


def _synthetic_run(num_points=40, bad=None, units="m", no_readback=()):
    """A raw ptycho run with frames inline in the events, and some planted bad frames;
    readbacks in *units*, none for the points in *no_readback*."""
    bad = bad or {}
    scale = {"m": 1.0, "um": 1e6}[units]
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
            "x_units": units,
            "y_units": units,
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
        data = {"fccd_image": frame, "stage_x": x * scale, "stage_y": y * scale}
        if i in no_readback:
            del data["stage_x"], data["stage_y"]
        yield (
            "event",
            prim.compose_event(data=data, timestamps=dict.fromkeys(data, 0), validate=False),
        )
    yield "stop", run.compose_stop()


def test_bad_frames_are_flagged_and_the_run_goes_on(tmp_path):
    nan_frame = np.full(fccd.RAW_SHAPE, 4100.0)
    nan_frame[100:110, 200:300] = np.nan
    bad = {5: np.zeros((100, 100), np.uint16), 11: nan_frame}
    pipe = Pipeline(
        output_dir=tmp_path, params={"reconstruction": {"final_iterations": 3, "min_frames": 4}}
    )
    out = []
    pipe.subscribe(lambda n, d: out.append((n, d)))
    uid = None
    for name, doc in _synthetic_run(bad=bad):
        uid = uid or doc["uid"]
        pipe(name, doc)
    run = pipe.wait(uid, timeout=120)
    assert run.errors == {
        "dark_statistics": [],
        "frame_cleaning": [],
        "stxm": [],
        "reconstruction": [],
        "quality": [],
    }
    r = run["reconstruction"].result
    assert set(r.flags) == {5, 11}
    assert "wrong shape (100, 100)" in r.flags[5] and "non-finite" in r.flags[11]
    assert r.weights[5] == 0 and r.weights[11] == 0 and r.weights.sum() == 38
    assert r.iterations >= 3 and np.isfinite(r.object).all()
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


def _run_pipeline(docs, **params):
    pipe = Pipeline(params=params)
    out = []
    pipe.subscribe(lambda n, d: out.append((n, d)))
    uid = None
    for name, doc in docs:
        uid = uid or doc["uid"]
        pipe(name, doc)
    return pipe.wait(uid, timeout=120), out


def test_bad_input_frames_are_flagged_with_the_reason():
    sat = np.full(fccd.RAW_SHAPE, 4100, np.uint16)
    img = fccd.raw_to_image(sat)
    img[950:960, 470:480] = 65535  # saturated pixels at the beam centre
    bad = {
        2: np.zeros(fccd.RAW_SHAPE, np.complex64),
        3: np.zeros(fccd.RAW_SHAPE, np.uint16),
        4: fccd.image_to_raw(img, fill=4100),
    }
    run, _ = _run_pipeline(
        _synthetic_run(num_points=12, bad=bad),
        reconstruction={"final_iterations": 1, "min_frames": 4},
    )
    assert all(not e for e in run.errors.values()), run.errors
    flags = run["reconstruction"].result.flags
    assert "wrong dtype complex64" in flags[2]
    assert "all zeros" in flags[3]
    assert "100 saturated pixels inside the crop" in flags[4]
    assert set(flags) == {2, 3, 4}


def test_runs_without_usable_darks_are_cleaned_with_the_overscan(caplog):
    # the darks have another shape: each is skipped with its reason, the frames still clean
    docs = list(_synthetic_run(num_points=6))
    for name, doc in docs:
        if name == "event" and "stage_x" not in doc["data"]:
            doc["data"]["fccd_image"] = np.zeros((10, 10), np.uint16)
    run, _ = _run_pipeline(docs, reconstruction={"final_iterations": 1, "min_frames": 2})
    skipped = run["dark_statistics"].skipped
    assert [why for _, why in skipped] == ["wrong shape (10, 10), expected (1152, 1940)"] * 3
    assert run["frame_cleaning"].n_cleaned == 6 and run["frame_cleaning"].n_flagged == 0
    assert "no dark frames for this run" in caplog.text


def test_bad_parameters_are_refused_before_any_run():
    default = r"default\.toml: stages\."
    with pytest.raises(
        PipelineFileError,
        match=default + r"frame_cleaning\.params\.threshold_adu = -1 "
        r"is at or below the minimum 0 ADU",
    ):
        Pipeline(params={"frame_cleaning": {"threshold_adu": -1}})
    with pytest.raises(
        PipelineFileError,
        match=r"treshold_adu = 15 is not a parameter of "
        r"'frame_cleaning'; did you mean 'threshold_adu'\?",
    ):
        Pipeline(params={"frame_cleaning": {"treshold_adu": 15}})
    with pytest.raises(PipelineFileError, match=r"stxm\.params\.levels = 0\.1 is not a parameter"):
        Pipeline(params={"stxm": {"levels": 0.1}})
    with pytest.raises(
        PipelineFileError,
        match=r"initial_probe = 'guess' is not one of "
        r"\['zone_plate', 'estimate'\]",
    ):
        Pipeline(params={"reconstruction": {"initial_probe": "guess"}})
    with pytest.raises(
        PipelineFileError, match=r"channel_excess_adu = 0 is at or below the minimum"
    ):
        Pipeline(params={"dark_statistics": {"channel_excess_adu": 0}})
    with pytest.raises(PipelineFileError, match=r"reconstruction\.params: .*batch_sise"):
        Pipeline(params={"reconstruction": {"options": {"batch_sise": 4}}})


def test_stxm_and_probe_estimate_feed_the_reconstruction():
    from bluesky_ptycho.core.metrics import illuminated_region, object_error

    run, out = _run_pipeline(
        _synthetic_run(num_points=60),
        stxm={"probe_frames": 16},
        reconstruction={"final_iterations": 30, "min_frames": 16, "initial_probe": "estimate"},
    )
    assert all(not e for e in run.errors.values()), run.errors
    stxm = [d["data"] for n, d in out if n == "event" and "dpc_x" in d["data"]]
    assert sorted(d["point"] for d in stxm) == list(range(60))
    estimates = [
        d["data"]
        for n, d in out
        if n == "event" and "n_frames" in d["data"] and "probe" in d["data"]
    ]
    assert estimates[0]["n_frames"] >= 16 and estimates[-1]["n_frames"] == 60
    # the estimate against the true zone-plate probe, propagated by the metadata's defocus:
    # measured overlap of |P|² 0.993 and of P itself 0.952 (1 = equal up to scale and phase).
    # Without the defocus (the focus, not the spot the sample sees): 0.65 and 0.50.
    truth = sim.fzp_probe(Geometry(), ZonePlate())
    est = run["stxm"].probe
    a, b = np.abs(est) ** 2, np.abs(truth) ** 2
    overlap = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
    assert overlap > 0.97
    assert abs(np.vdot(est, truth)) / np.linalg.norm(est) / np.linalg.norm(truth) > 0.9
    # photons per point (transmission) vary with the absorbing sample: measured 4 % spread
    photons = np.array([d["photons"] for d in stxm])
    assert photons.std() / photons.mean() > 0.01
    # starting from the estimate, the reconstruction converges: measured object error 0.19
    # and 0.21 (0.19 and 0.29 from the zone plate, the default; 0.38 from an estimate
    # without the defocus; an empty object scores about 1)
    r = run["reconstruction"].result
    sample = sim.SimulatedSample(Geometry(), ZonePlate(), scan_extent_m=2e-6)
    err = object_error(r.object, sample.object_on(r.grid), illuminated_region(r.illumination, 0.3))
    assert err < 0.35


def planned_of(docs, p):
    return docs[0][1]["ptycho"]["positions_m"][p]


def test_readbacks_in_um_reach_the_reconstruction_in_m_and_missing_ones_fall_back(tmp_path):
    pipe = Pipeline(params={"reconstruction": {"final_iterations": 2, "min_frames": 4}})
    out = []
    pipe.subscribe(lambda n, d: out.append((n, d)))
    uid = None
    docs = list(_synthetic_run(num_points=20, units="um", no_readback=(3, 7)))
    for name, doc in docs:
        uid = uid or doc["uid"]
        pipe(name, doc)
    run = pipe.wait(uid, timeout=120)
    assert run["reconstruction"].planned_fallback == 2
    assert not any(run.errors.values()), run.errors
    # the quality monitor judges those frames at their planned positions
    verdicts = {
        d["data"]["point"]: d["data"] for n, d in out if n == "event" and "bad" in d["data"]
    }
    np.testing.assert_allclose((verdicts[3]["x"], verdicts[3]["y"]), planned_of(docs, 3))
    planned = np.asarray(docs[0][1]["ptycho"]["positions_m"])
    cleaned = {
        int(p): (x, y)
        for n, d in out
        if n == "event" and "frame" in d["data"]
        for p, x, y in [(d["data"]["point"], d["data"]["x"], d["data"]["y"])]
    }
    for p, (x, y) in cleaned.items():
        if p in (3, 7):
            assert np.isnan(x) and np.isnan(y)
        else:
            np.testing.assert_allclose((x, y), planned[p], rtol=1e-9, atol=1e-15)
