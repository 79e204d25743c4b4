"""ptycho_scan: bad parameters are refused before any run opens; the documents are right."""

import re
import runpy
from pathlib import Path

import pytest
from bluesky import RunEngine
from event_model import DocumentNames, schema_validators

from bluesky_ptycho.acquisition.plans import ptycho_scan
from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD
from bluesky_ptycho.devices.stage import STAGE_PRECISION

PROFILE = Path(__file__).parents[2] / "profiles" / "profile_ptycho" / "startup"


@pytest.fixture
def devices(tmp_path):
    stage = SampleStage(name="stage")
    shutter = Shutter(name="shutter")
    fccd = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=tmp_path)
    return fccd, stage, shutter


def test_a_name_instead_of_a_device_is_refused_before_the_run(devices):
    _fccd, stage, shutter = devices
    RE = RunEngine({})
    with pytest.raises(ValueError, match="detector='nothing' is not a detector device"):
        RE(ptycho_scan("nothing", stage, shutter))


def test_positions_go_to_the_stage_in_its_units_and_the_start_document_says_which(devices):
    fccd, stage, shutter = devices
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    RE(
        ptycho_scan(
            fccd, stage, shutter, positions=[(1e-6, -0.5e-6), (0.25e-6, 0.5e-6)], num_darks=1
        )
    )
    start = next(d for n, d in docs if n == "start")
    assert start["ptycho"]["x_units"] == "um" and start["ptycho"]["positions_m"][0] == [
        1e-6,
        -0.5e-6,
    ]
    ev = [d["data"] for n, d in docs if n == "event" and "stage_x" in d["data"]]
    assert [(e["stage_x"], e["stage_y"]) for e in ev] == [(1.0, -0.5), (0.25, 0.5)]


def test_best_effort_callback_prints_positions_in_um_to_the_stage_precision(devices, capsys):
    """The profile's table (its 40-bec.py: a real BestEffortCallback and the units line)."""
    fccd, stage, shutter = devices
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    runpy.run_path(str(PROFILE / "40-bec.py"), init_globals={"RE": RE})
    RE(
        ptycho_scan(
            fccd, stage, shutter, positions=[(1.25e-6, -0.5e-6), (-3e-9, 1e-6)], num_darks=1
        )
    )
    (desc,) = [d for n, d in docs if n == "descriptor" and d["name"] == "primary"]
    for key in ("stage_x", "stage_y"):
        assert desc["data_keys"][key]["units"] == "um"
        assert desc["data_keys"][key]["precision"] == STAGE_PRECISION == 3
    out = capsys.readouterr().out
    rows = [line.split("|")[3:5] for line in out.splitlines() if re.match(r"\|\s+\d+ \|", line)]
    assert [[c.strip() for c in r] for r in rows] == [["1.250", "-0.500"], ["-0.003", "1.000"]]
    head = out.index("Units: stage_x [um], stage_y [um]")
    assert head < out.index("|   seq_num |")  # the units line just above the table


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_points": 0}, "num_points=0"),
        ({"step": 0.0}, "step=0.0"),
        ({"step": -1e-7}, "step=-1e-07"),
        ({"energy": -800.0}, "energy=-800.0"),
        ({"energy": 0}, "energy=0"),
        ({"num_darks": 0}, "num_darks=0"),
        ({"pattern": "spiral"}, "pattern='spiral'"),
        ({"center": (19.9e-6, 0.0)}, "outside the stage limits"),
        ({"positions": []}, "positions has shape"),
        ({"positions": [(0.0, float("nan"))]}, "NaN"),
    ],
)
def test_bad_parameters_are_refused_before_the_run(devices, kwargs, message):
    fccd, stage, shutter = devices
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda n, d: docs.append(n))
    with pytest.raises(ValueError, match=message):
        RE(ptycho_scan(fccd, stage, shutter, **kwargs))
    assert docs == []  # no run was opened


def test_unconfigured_detector_is_refused(devices):
    fccd, stage, shutter = devices
    fccd.acquire_time.put(0)
    with pytest.raises(ValueError, match="acquire_time=0 must be > 0"):
        ptycho_scan(fccd, stage, shutter, num_points=4)


def test_scan_documents(devices):
    fccd, stage, shutter = devices
    fccd.acquire_time.put(0.001)
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    RE(ptycho_scan(fccd, stage, shutter, num_points=5, num_darks=2, pattern="raster", step=80e-9))
    for name, doc in docs:
        schema_validators[DocumentNames(name)].validate(doc)
    start = docs[0][1]
    md = start["ptycho"]
    assert md["num_points"] == 5 and md["num_darks"] == 2 and md["pattern"] == "raster"
    assert len(md["positions_m"]) == 5 and md["energy_ev"] > 0 and md["distance_m"] > 0
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    events = [d for n, d in docs if n == "event"]
    assert [streams[e["descriptor"]] for e in events] == ["dark"] * 2 + ["primary"] * 5
    datums = [d for n, d in docs if n == "stream_datum"]
    assert len(datums) == 7 and len([1 for n, _ in docs if n == "stream_resource"]) == 2
    # events stay small: the frames are in the HDF5 files
    assert all("fccd_image" not in e["data"] for e in events)
    assert shutter.state.get() == "closed"


def test_dark_frames_when_the_shutter_is_closed(devices):
    fccd, _stage, _shutter = devices
    fccd.stage()
    try:
        dark = fccd.simulate_frame((0.0, 0.0), shutter_open=False, photons=1e6)
        light = fccd.simulate_frame((0.0, 0.0), shutter_open=True, photons=1e6)
    finally:
        fccd.unstage()
    assert dark.shape == light.shape == (1152, 1940) and dark.dtype == "uint16"
    # the bright-field disc around the beam centre holds ~280 photons per pixel, 14 of
    # them (36.5 ADU each) through the 5 % beamstop; a dark frame holds none
    import numpy as np

    from bluesky_ptycho.core.fccd import raw_to_image

    r, c = fccd.beam_center
    disc = (slice(r - 20, r + 20), slice(c - 20, c + 20))
    lit = raw_to_image(light)[disc].astype(float) - raw_to_image(dark)[disc]
    assert np.median(lit) > 200
