"""The EPICS devices against ``bluesky-ptycho ioc`` over real Channel Access (caproto):
a whole ptycho_scan with darks and live reconstruction stored in the catalog, and the
failures a beamline meets."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine
from caproto.sync import client as ca
from epics_ioc import Ioc, ca_environment, free_ca_port

from bluesky_ptycho.acquisition.plans import ptycho_scan
from bluesky_ptycho.devices.epics import (
    EpicsFCCD,
    EpicsSampleStage,
    EpicsShutter,
    epics_devices,
    stop_searching,
)
from bluesky_ptycho.pipeline.runner import Pipeline
from bluesky_ptycho.storage.catalog import Catalog

PARAMS = {
    "reconstruction": {"final_iterations": 30, "min_frames": 1000},
    "frame_cleaning": {"batch_size": 4},
}
_run = itertools.count()


@pytest.fixture(scope="module")
def ca_port():
    """One Channel Access port on 127.0.0.1 for this module's IOCs and clients."""
    port = free_ca_port()
    env = ca_environment(port)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield port
    # the client would go on searching for the PVs of the IOCs stopped here (and NOBODY:*)
    stop_searching()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class Beamline:
    """An IOC with PV names of its own (no stale channel from an earlier IOC), and its PVs."""

    def __init__(self, port: int, folder: Path, args: list[str], default_names: bool = False):
        n = next(_run)
        base = "PTYCHO" if default_names else f"T{n}PTYCHO"
        self.fccd_prefix = f"{base}:FCCD:"
        self.x_pv, self.y_pv, self.shutter_pv = (
            f"{base}:STAGE:X",
            f"{base}:STAGE:Y",
            f"{base}:SHUTTER",
        )
        names = [
            "--fccd-prefix", self.fccd_prefix, "--x-pv", self.x_pv, "--y-pv", self.y_pv,
            "--shutter-pv", self.shutter_pv, "--interfaces", "127.0.0.1",
        ]  # fmt: skip
        self.ioc = Ioc(port, folder / f"ioc{n}.log", names + args)
        self.raw = folder / "raw"
        self.raw.mkdir(exist_ok=True)

    def devices(self, **kw):  # type: ignore[no-untyped-def]
        return epics_devices(
            write_path=self.raw,
            fccd_prefix=self.fccd_prefix,
            x_pv=self.x_pv,
            y_pv=self.y_pv,
            shutter_pv=self.shutter_pv,
            connect_timeout=30,
            **kw,
        )

    def put(self, suffix: str, value) -> None:  # type: ignore[no-untyped-def]
        ca.write(suffix, value, notify=True, timeout=5, repeater=False)


@pytest.fixture
def beamline(ca_port, tmp_path):
    """Start an IOC (``beamline(args)``); every one started is stopped by pid afterwards."""
    started: list[Beamline] = []

    def start(args: list[str] | None = None, default_names: bool = False) -> Beamline:
        b = Beamline(ca_port, tmp_path, list(args or []), default_names)
        started.append(b)
        b.ioc.start()
        return b

    yield start
    for b in started:
        b.ioc.stop()


def _docs(RE: RunEngine) -> list:
    docs: list = []
    RE.subscribe(lambda n, d: docs.append((n, d)))
    return docs


def test_caproto_get_and_put_from_a_shell(beamline, ca_port):
    # --no-repeater (and repeater=False below): a CA repeater daemon, which the clients start
    # when none runs, would inherit the pipes and hold them open long after the client ended.
    beamline(["--no-defects"], default_names=True)
    env = {**os.environ, **ca_environment(ca_port)}
    bindir = Path(sys.executable).parent
    get = subprocess.run(
        [bindir / "caproto-get", "--no-repeater", "PTYCHO:FCCD:cam1:ArrayCounter_RBV", "PTYCHO:STAGE:X.EGU"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )  # fmt: skip
    assert get.returncode == 0, get.stderr
    assert "PTYCHO:FCCD:cam1:ArrayCounter_RBV" in get.stdout and "[0]" in get.stdout
    assert "[um]" in get.stdout
    put = subprocess.run(
        [bindir / "caproto-put", "--no-repeater", "PTYCHO:STAGE:X", "1e-6"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    assert "New : PTYCHO:STAGE:X" in put.stdout and "[1.e-06]" in put.stdout
    # the motor moves there; its readback (the encoder) is near, not exactly on it
    time.sleep(0.5)
    deadline = time.monotonic() + 10
    while ca.read("PTYCHO:STAGE:X.DMOV", repeater=False).data[0] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert abs(ca.read("PTYCHO:STAGE:X.RBV", repeater=False).data[0] - 1e-6) < 0.2
    # a finite speed (VELO, µm/s), and STOP stops it where it is
    assert ca.read("PTYCHO:STAGE:X.VELO", repeater=False).data[0] == 100.0
    ca.write("PTYCHO:STAGE:X", 40.0, notify=True, repeater=False)
    time.sleep(0.15)
    assert ca.read("PTYCHO:STAGE:X.DMOV", repeater=False).data[0] == 0
    ca.write("PTYCHO:STAGE:X.STOP", 1, notify=True, repeater=False)
    deadline = time.monotonic() + 5
    while ca.read("PTYCHO:STAGE:X.DMOV", repeater=False).data[0] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stopped = ca.read("PTYCHO:STAGE:X.RBV", repeater=False).data[0]
    assert 2.0 < stopped < 35.0
    assert (
        abs(ca.read("PTYCHO:STAGE:X", repeater=False).data[0] - stopped) < 0.2
    )  # VAL: where it stopped


@pytest.mark.slow
def test_epics_scan_with_darks_live_reconstruction_and_catalog(beamline, tmp_path):
    b = beamline(["--settle-sigma", "0.02", "--jitter-sigma", "0.01"])
    catalog = Catalog(directory=tmp_path / "catalog")
    b.raw = Path(catalog.raw_dir)
    fccd, stage, shutter = b.devices()
    assert isinstance(fccd, EpicsFCCD) and isinstance(stage, EpicsSampleStage)
    assert stage.x.egu == "um" and stage.x.limits == (-50.0, 50.0)
    RE = RunEngine({})
    pipeline = Pipeline(params=PARAMS)
    RE.subscribe(catalog.writer)
    RE.subscribe(pipeline)
    pipeline.subscribe(catalog.writer)
    docs = _docs(RE)
    (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=30, step=100e-9, num_darks=4))
    run = pipeline.wait(uid, timeout=300)
    assert catalog.writer.flush(120)

    start = next(d for n, d in docs if n == "start")
    md = start["ptycho"]
    assert md["x_units"] == "um" and md["y_units"] == "um"
    assert md["image_key"] == "fccd_image" and md["x_key"] == "stage_x"
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "success"
    streams = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    resources = [d for n, d in docs if n == "stream_resource"]
    assert len(resources) == 2 and all(r["mimetype"] == "application/x-hdf5" for r in resources)
    datums = [d for n, d in docs if n == "stream_datum"]
    assert sum(streams[d["descriptor"]] == "dark" for d in datums) == 4
    assert sum(streams[d["descriptor"]] == "primary" for d in datums) == 30
    # the frame counter advances, the readbacks are measured (µm), not the planned positions
    events = [d for n, d in docs if n == "event" and streams[d["descriptor"]] == "primary"]
    counters = [e["data"]["fccd_cam_array_counter"] for e in events]
    assert counters == sorted(counters) and len(set(counters)) == 30
    planned = np.asarray(md["positions_m"]) / 1e-6
    measured = np.array([[e["data"]["stage_x"], e["data"]["stage_y"]] for e in events])
    dev = np.abs(measured - planned)
    assert dev.max() < 0.2 and dev.mean() > 1e-4  # settling error and jitter, in µm

    # the file as areaDetector's HDF5 plugin writes it: SWMR, NDAttributes, one per capture
    import h5py

    path = resources[1]["uri"].removeprefix("file://localhost")
    with h5py.File(path, "r", swmr=True) as f:
        assert f["/entry/data/data"].shape == (30, 1152, 1940)
        ids = f["/entry/instrument/NDAttributes/NDArrayUniqueId"][()]
        assert np.all(np.diff(ids) == 1)

    # live reconstruction at the readbacks, and the run in the catalog with its frames
    rec = run["reconstruction"].result
    assert rec is not None and np.isfinite(rec.object).all()
    assert run["reconstruction"].planned_fallback == 0
    assert len(rec.flags) <= 2, rec.flags
    assert len(catalog[uid]["primary"]["fccd_image"].read()) == 30
    assert "reconstruction" in catalog.derived(uid)
    assert not any(run.errors.values()), run.errors
    catalog.close()


def test_motor_positions_carry_the_records_egu_and_prec_to_the_table(beamline, capsys):
    from bluesky.callbacks.best_effort import BestEffortCallback
    from caproto import ChannelType

    b = beamline(["--no-defects"])
    fccd, stage, shutter = b.devices()
    # the IOC's channels say what a motor record's say: RBV and VAL in the EGU, to PREC decimals
    for field in (".RBV", ""):
        meta = ca.read(b.x_pv + field, data_type=ChannelType.CTRL_DOUBLE, repeater=False).metadata
        assert (meta.units, meta.precision) == (b"um", 3), (field, meta)
    assert ca.read(b.x_pv + ".PREC", repeater=False).data[0] == 3
    RE = RunEngine({})
    docs = _docs(RE)
    bec = BestEffortCallback()
    bec.disable_plots()
    RE.subscribe(bec)
    RE(ptycho_scan(fccd, stage, shutter, positions=[(1.25e-6, -0.5e-6)], num_darks=1))
    (desc,) = [d for n, d in docs if n == "descriptor" and d["name"] == "primary"]
    for key in ("stage_x", "stage_y"):
        assert desc["data_keys"][key]["units"] == "um"
        assert desc["data_keys"][key]["precision"] == 3
    (ev,) = [d for n, d in docs if n == "event" and d["descriptor"] == desc["uid"]]
    (row,) = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("|         1 |")
    ]
    x, y = (float(c) for c in row.split("|")[3:5])
    assert row.split("|")[3].strip() == f"{ev['data']['stage_x']:.3f}"
    assert abs(x - 1.25) < 0.2 and abs(y + 0.5) < 0.2  # µm: where the motor settled


def test_unreachable_ioc_names_the_pv_before_any_run(ca_port, tmp_path):
    with pytest.raises(ConnectionError, match=r"NOBODY:FCCD:cam1:\w+.*bluesky-ptycho ioc"):
        epics_devices(write_path=tmp_path, fccd_prefix="NOBODY:FCCD:", connect_timeout=1)
    # devices made without connecting: the plan refuses at call time, no run opens
    fccd = EpicsFCCD("NOBODY:FCCD:", name="fccd", write_path=tmp_path)
    stage = EpicsSampleStage(name="stage", x_pv="NOBODY:X", y_pv="NOBODY:Y")
    shutter = EpicsShutter("NOBODY:SHUTTER", name="shutter")
    RE = RunEngine({})
    docs = _docs(RE)
    with pytest.raises(ConnectionError, match=r"NOBODY:X\.RBV"):
        RE(ptycho_scan(fccd, stage, shutter, num_points=4, num_darks=1))
    assert docs == []


@pytest.mark.slow
def test_ioc_dying_mid_scan_fails_the_run_and_keeps_its_frames(beamline, tmp_path):
    b = beamline(["--no-defects"])
    catalog = Catalog(directory=tmp_path / "catalog")
    b.raw = Path(catalog.raw_dir)
    fccd, stage, shutter = b.devices()
    fccd.trigger_timeout = 3.0
    RE = RunEngine({})
    pipeline = Pipeline(params=PARAMS)
    RE.subscribe(catalog.writer)
    RE.subscribe(pipeline)
    pipeline.subscribe(catalog.writer)
    docs = _docs(RE)

    def kill_after_12(name, doc):  # type: ignore[no-untyped-def]
        if name == "event" and doc["data"].get("stage_point") == 11:
            b.ioc.kill()

    RE.subscribe(kill_after_12)
    with pytest.raises(Exception) as err:
        RE(ptycho_scan(fccd, stage, shutter, num_points=30, num_darks=3))
    text = f"{err.value} {err.value.__cause__}"
    assert "fccd" in text or "PTYCHO" in text, text
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "fail" and stop["reason"]
    uid = stop["run_start"]
    run = pipeline.wait(uid, timeout=300)
    assert catalog.writer.flush(120)
    # the frames taken before the IOC died are stored and reconstructed
    taken = [d for n, d in docs if n == "event" and "stage_point" in d["data"]]
    assert len(taken) == 12
    assert len(catalog[uid]["primary"]["fccd_image"].read()) == 12
    rec = run["reconstruction"].result
    assert rec is not None and np.isfinite(rec.object).all()
    catalog.close()


def test_a_detector_that_never_finishes_times_out_naming_it(beamline):
    b = beamline(["--no-defects"])
    fccd, stage, shutter = b.devices()
    fccd.trigger_timeout = 1.0
    b.put(b.fccd_prefix + "cam1:SimHang", 1)
    RE = RunEngine({})
    docs = _docs(RE)
    t0 = time.monotonic()
    with pytest.raises(Exception) as err:
        RE(ptycho_scan(fccd, stage, shutter, num_points=3, num_darks=1))
    assert time.monotonic() - t0 < 30
    text = f"{err.value} {err.value.__cause__}"
    assert "detector 'fccd'" in text and "did not finish an image" in text, text
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "fail" and "fccd" in stop["reason"]
    # the hung acquisition was stopped: the camera is idle again
    assert ca.read(b.fccd_prefix + "cam1:Acquire", repeater=False).data[0] in (0, b"Done")


def test_limits_refused_before_the_scan_and_a_limit_switch_mid_scan(beamline):
    b = beamline(["--no-defects", "--travel=-0.3,0.3"])
    fccd, stage, shutter = b.devices()
    b.put(b.x_pv + ".HLM", 0.5)
    deadline = time.monotonic() + 10
    while stage.x.limits != (-50.0, 0.5):
        assert time.monotonic() < deadline, stage.x.limits
        time.sleep(0.05)
    RE = RunEngine({})
    docs = _docs(RE)
    with pytest.raises(
        ValueError, match=r"stage_x=0\.\d+ um, outside the stage limits \[-50, 0.5\]"
    ):
        RE(ptycho_scan(fccd, stage, shutter, num_points=4, num_darks=1, center=(0.45e-6, 0.0)))
    assert docs == []
    # inside the soft limits, past the hardware's travel: the limit switch stops the run
    with pytest.raises(Exception) as err:
        RE(ptycho_scan(fccd, stage, shutter, num_points=20, step=150e-9, num_darks=1))
    text = f"{err.value} {err.value.__cause__}"
    assert "limit switch" in text and "stage_" in text, text
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "fail"


@pytest.mark.slow
def test_late_frames_are_used_and_missing_files_flagged(beamline, tmp_path):
    b = beamline(["--no-defects"])
    fccd, stage, shutter = b.devices()
    RE = RunEngine({})
    pipeline = Pipeline(params={**PARAMS, "frame_cleaning": {"batch_size": 1}})
    RE.subscribe(pipeline)
    # late: the file writer lags 1 s behind the camera; the stages wait for the frames
    b.put(b.fccd_prefix + "HDF1:SimWriteDelay", 1.0)
    (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=8, num_darks=2))
    run = pipeline.wait(uid, timeout=300)
    assert run["frame_cleaning"].n_flagged == 0
    assert not any(run.errors.values()), run.errors
    # missing: the plugin writes no file (a full disk); frames flagged, the run completes
    b.put(b.fccd_prefix + "HDF1:SimWriteDelay", 0.0)
    b.put(b.fccd_prefix + "HDF1:SimNoFile", 1)
    (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=6, num_darks=2))
    run = pipeline.wait(uid, timeout=300)
    assert run["frame_cleaning"].n_flagged == 6
    assert len(run["dark_statistics"].skipped) == 2
    assert "could not read the frame" in run["dark_statistics"].skipped[0][1]
