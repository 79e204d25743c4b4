"""Closing the loop through the real RunEngine: the quality monitor, the suspender, rescans."""

import threading
import time

import numpy as np
import pytest
from bluesky import RunEngine

from bluesky_ptycho.acquisition.feedback import (
    QualityFeedback,
    QualityGate,
    install_quality_suspender,
)
from bluesky_ptycho.acquisition.plans import ptycho_scan
from bluesky_ptycho.acquisition.rescan import RescanPlanner
from bluesky_ptycho.core.metrics import illuminated_region, object_error
from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD
from bluesky_ptycho.pipeline.runner import Pipeline

N = 64


def _setup(tmp_path, faults=None):
    RE = RunEngine({})
    stage = SampleStage(name="stage")
    shutter = Shutter(name="shutter")
    fccd = SimFCCD(
        name="fccd", stage=stage, shutter=shutter, write_path=tmp_path, seed=3, defects=None
    )
    fccd.faults = dict(faults or {})
    pipe = Pipeline(
        params={"reconstruction": {"final_iterations": 60}, "frame_cleaning": {"batch_size": 2}}
    )
    RE.subscribe(pipe)
    return RE, fccd, stage, shutter, pipe


def _object_error(fccd, run):
    r = run["reconstruction"].result
    truth = fccd.sample.object_on(r.grid)
    return object_error(r.object, truth, illuminated_region(r.illumination, 0.3))


def _primary_points(docs):
    descs = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary"}
    return [
        (d["data"]["stage_point"], d["time"])
        for n, d in docs
        if n == "event" and d["descriptor"] in descs
    ]


@pytest.mark.slow
def test_beam_drop_suspends_the_scan_and_no_point_is_lost(tmp_path):
    RE, fccd, stage, shutter, pipe = _setup(tmp_path)
    gate, feedback = install_quality_suspender(
        RE, pipe, beam=fccd.sim_flux, beam_ok=1e7, settle=0.3, sleep=0.2
    )
    planner = RescanPlanner()
    pipe.subscribe(planner)
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    states = []
    gate.bad.subscribe(lambda value, **kw: states.append((value, time.monotonic())), run=False)
    flux = fccd.sim_flux.get()
    window = {}

    def beam(value, **kw):  # the beam dumps at the 25th frame after the darks, for 3 s
        if value == 5 + 20 and "off" not in window:
            window["off"] = time.monotonic()
            fccd.sim_flux.put(0.0)

            def back():
                window["on"] = time.monotonic()
                fccd.sim_flux.put(flux)

            threading.Timer(3.0, back).start()

    fccd.frame_number.subscribe(beam, run=False)
    (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=N, num_darks=5, rescan=planner))
    run = pipe.wait(uid, timeout=300)
    assert all(not e for e in run.errors.values()), run.errors

    # the gate closed while the beam was off and opened after it came back
    assert feedback.trips >= 1 and gate.bad.get() == 0
    closed = [t for v, t in states if v == 1]
    opened = [t for v, t in states if v == 0]
    assert window["off"] < closed[0] < window["on"] <= opened[-1]
    # the RunEngine waited: no frame was taken while the gate was closed
    points = _primary_points(docs)
    wall = time.time() - time.monotonic()
    assert not any(closed[0] + 0.5 < t - wall < window["on"] for _, t in points)
    # no point lost: every planned point has a good frame in the reconstruction
    r = run["reconstruction"].result
    assert sorted({p for p, _ in points}) == list(range(N))
    assert (r.weights == 1).all() and r.flags == {}
    assert run["quality"].bad_points == {}
    # the low-flux frames taken before the gate closed were measured again
    assert planner.get_best_points() and all(o["good"] for _, _, o in planner.get_best_points())
    feedback.close()
    pipe.close()


@pytest.mark.slow
def test_planted_bad_frames_are_rescanned_and_the_object_is_as_good(tmp_path):
    RE, fccd, stage, shutter, pipe = _setup(tmp_path / "clean")
    (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=N, num_darks=5))
    clean = _object_error(fccd, pipe.wait(uid, timeout=300))
    pipe.close()

    faults = {5: "corrupt", 12: "saturate", 20: "no_beam", 27: "misplaced"}
    RE, fccd, stage, shutter, pipe = _setup(tmp_path / "bad", faults)
    planner = RescanPlanner()
    pipe.subscribe(planner)
    (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=N, num_darks=5, rescan=planner))
    run = pipe.wait(uid, timeout=300)
    rescanned = _object_error(fccd, run)
    r = run["reconstruction"].result
    # every planted fault was found, measured again (once), and replaced by a good frame
    assert sorted(p for p, _, o in planner.get_best_points() if o["good"]) == sorted(faults)
    assert planner.attempts == dict.fromkeys(faults, 1)
    assert (r.weights == 1).all() and r.flags == {}
    # Stated margin: measured 0.109 with rescans vs 0.106 clean (this scan; thread timing
    # moves either by about 0.01), so the rescanned object may be at most 0.03 worse.
    assert rescanned < clean + 0.03, (rescanned, clean)
    pipe.close()


def test_feedback_opens_after_hold_without_a_beam_signal():
    gate = QualityGate(name="q")
    fb = QualityFeedback(gate, hold=0.2)
    fb(
        "event",
        {"data": {"ok": False, "reason": "2 frames in a row with low flux", "consecutive_bad": 2}},
    )
    assert gate.bad.get() == 1 and "low flux" in gate.reason.get()
    time.sleep(0.5)
    assert gate.bad.get() == 0 and fb.trips == 1


def test_feedback_refuses_a_beam_signal_without_a_level():
    from ophyd import Signal

    with pytest.raises(ValueError, match="beam_ok=0"):
        QualityFeedback(QualityGate(name="q"), beam=Signal(name="i0", value=1.0))


def test_planner_suggests_bad_points_and_new_ones_where_the_error_is_high():
    planner = RescanPlanner(add_points=2, max_attempts=1)
    pos = np.array([[x * 1e-7, y * 1e-7] for y in range(4) for x in range(4)])
    planner(
        "start",
        {
            "uid": "q",
            "stage": "quality",
            "source_run": "raw",
            "ptycho": {"positions_m": pos.tolist()},
        },
    )
    for p, (x, y) in enumerate(pos):
        planner(
            "event",
            {
                "descriptor": "d",
                "data": {
                    "point": p,
                    "x": x,
                    "y": y,
                    "bad": p == 6,
                    "reason": "low flux" if p == 6 else "",
                    "relative": 0.9,
                },
            },
        )
    errors = np.full(16, 0.01)
    errors[9] = 0.1
    planner("event", {"descriptor": "s", "data": {"frame_errors": errors}})
    out = planner.suggest(3)
    assert out[0] == {"_id": 6, "stage_x": pos[6][0], "stage_y": pos[6][1]}
    # a new point (numbered after the scan's) halfway between point 9 and a neighbour
    assert out[1]["_id"] == 16
    assert min(np.hypot(*(pos - [out[1]["stage_x"], out[1]["stage_y"]]).T)) == pytest.approx(5e-8)
    assert len(out) == 2  # the one high-error frame gives one new point
    assert planner.suggest(1) == []  # 6 is pending its verdict, and tried once already
    planner.ingest([{"_id": 6, "remeasured": 1}])
    planner(
        "event",
        {
            "descriptor": "d",
            "data": {
                "point": 6,
                "x": pos[6][0],
                "y": pos[6][1],
                "bad": False,
                "reason": "",
                "relative": 0.9,
            },
        },
    )
    assert planner.settled is False  # 16 waits for its frame
    assert [p for p, _, o in planner.get_best_points()] == [6]


def test_planner_is_a_bluesky_adaptive_optimizer():
    from bluesky_adaptive.protocols import Optimizer

    assert isinstance(RescanPlanner(), Optimizer)


def test_rescan_parameters_are_refused_before_the_run(tmp_path):
    stage = SampleStage(name="stage")
    shutter = Shutter(name="shutter")
    fccd = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=tmp_path)
    with pytest.raises(ValueError, match="not an Optimizer"):
        ptycho_scan(fccd, stage, shutter, num_points=4, rescan=object())
    with pytest.raises(ValueError, match="rescan_every=-1"):
        ptycho_scan(fccd, stage, shutter, num_points=4, rescan_every=-1)
