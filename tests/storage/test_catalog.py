"""Runs stored in a real Tiled catalog (embedded on disk, and a `tiled serve` process),
read back with frames and derived results, replayed, and kept through a catalog outage."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from bluesky import RunEngine
from tiled_serve import TiledServe

from bluesky_ptycho.acquisition.plans import ptycho_scan
from bluesky_ptycho.apps.replay import replay
from bluesky_ptycho.core.metrics import illuminated_region, object_error
from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD
from bluesky_ptycho.pipeline.runner import Pipeline
from bluesky_ptycho.storage.catalog import Catalog
from bluesky_ptycho.storage.writer import read_spool

pytestmark = pytest.mark.slow
# Independent of timing, so that a replay can be compared with the live run: iterating only
# once every frame is in (min_frames above the scan's), cleaning frame by frame (the pickup
# estimate averages over a batch, and live batches form as frames arrive)
RECON = {
    "reconstruction": {"final_iterations": 60, "min_frames": 1000},
    "frame_cleaning": {"batch_size": 1},
}


class Scan:
    """A RunEngine, the simulated devices and the default pipeline, all writing to *catalog*."""

    def __init__(self, catalog: Catalog, raw_dir: Path) -> None:
        self.RE = RunEngine({})
        self.stage = SampleStage(name="stage")
        self.shutter = Shutter(name="shutter")
        self.fccd = SimFCCD(name="fccd", stage=self.stage, shutter=self.shutter, write_path=raw_dir)
        self.pipeline = Pipeline(params=RECON)
        self.docs: list = []
        self.RE.subscribe(catalog.writer)
        self.RE.subscribe(self.pipeline)
        self.RE.subscribe(lambda n, d: self.docs.append((n, d)))
        self.pipeline.subscribe(catalog.writer)
        self.pipeline.subscribe(lambda n, d: self.docs.append((n, d)))

    def __call__(self, num_points: int = 25, num_darks: int = 3, **kw):  # type: ignore[no-untyped-def]
        (uid,) = self.RE(
            ptycho_scan(
                self.fccd,
                self.stage,
                self.shutter,
                num_points=num_points,
                num_darks=num_darks,
                **kw,
            )
        )
        return uid, self.pipeline.wait(uid, timeout=300)


def _frames_on_disk(docs: list, stream: str) -> np.ndarray:
    """The detector's frames of *stream*, read straight from its HDF5 file."""
    names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    for n, d in docs:
        if n == "stream_datum" and names.get(d["descriptor"]) == stream:
            sres = next(
                r for m, r in docs if m == "stream_resource" and r["uid"] == d["stream_resource"]
            )
            with h5py.File(sres["uri"].removeprefix("file://localhost"), "r") as f:
                return f[sres["parameters"]["dataset"]][()]
    raise AssertionError(f"no frames of {stream}")


def _live_cleaned(docs: list, source_uid: str) -> np.ndarray:
    clean_uid = next(
        d["uid"]
        for n, d in docs
        if n == "start" and d.get("stage") == "frame_cleaning" and d["source_run"] == source_uid
    )
    desc = {d["uid"] for n, d in docs if n == "descriptor" and d["run_start"] == clean_uid}
    ev = sorted(
        (d for n, d in docs if n == "event" and d["descriptor"] in desc),
        key=lambda d: d["data"]["point"],
    )
    return np.stack([e["data"]["frame"] for e in ev])


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """One scan through the embedded catalog: (catalog folder, uid, live documents, run stages)."""
    folder = tmp_path_factory.mktemp("catalog")
    cat = Catalog(directory=folder)
    scan = Scan(cat, cat.raw_dir)
    uid, run = scan()
    assert cat.writer.flush(120)
    cat.close()
    return folder, uid, scan.docs, run


def test_run_is_stored_on_disk_and_read_back_with_frames_and_results(stored):
    folder, uid, docs, run = stored
    cat = Catalog(
        directory=folder
    )  # a new server on the same files: the catalog outlived the first
    try:
        raw = cat[uid]
        assert sorted(raw) == ["dark", "primary"]
        frames = raw["primary"]["fccd_image"].read()  # through the StreamResource reference
        assert frames.shape == (25, 1152, 1940) and frames.dtype == np.uint16
        np.testing.assert_array_equal(frames, _frames_on_disk(docs, "primary"))
        assert len(raw["dark"]["fccd_image"].read()) == 3
        np.testing.assert_allclose(
            raw["primary"]["stage_x"].read(),
            [d["data"]["stage_x"] for n, d in docs if n == "event" and "stage_x" in d["data"]],
        )
        derived = cat.derived(uid)
        assert sorted(derived) == [
            "dark_statistics",
            "frame_cleaning",
            "quality",
            "reconstruction",
            "stxm",
        ]
        cleaned = derived["frame_cleaning"]["cleaned"]
        np.testing.assert_array_equal(cleaned["frame"].read(), _live_cleaned(docs, uid))
        snap = derived["reconstruction"]["snapshot"]
        final = run["reconstruction"].result
        np.testing.assert_allclose(snap["object"].read()[-1], final.object, rtol=1e-6, atol=1e-7)
        assert bool(snap["final"].read()[-1])
        assert (
            derived["reconstruction"].metadata["start"]["pipeline"]["stages"]["reconstruction"][
                "params"
            ]["final_iterations"]
            == 60
        )
        # databroker's API over the same catalog
        db = cat.databroker
        header = db[uid]
        assert header.start["uid"] == uid and header.stop["exit_status"] == "success"
        assert len(header.table("primary")) == 25
        assert cat[1].metadata["start"]["uid"] == uid  # scan id → the raw run, not a derived one
        assert cat.writer.status().pending_runs == [] and not list((folder / "spool").iterdir())
    finally:
        cat.close()


def test_replay_of_a_stored_run_reproduces_the_live_result(stored):
    folder, uid, docs, run = stored
    cat = Catalog(directory=folder)
    try:
        result = replay(uid, cat, params=RECON)
        assert result.stored
        assert all(not e for e in result.run.errors.values()), result.run.errors
        derived = result.derived
        again = cat[derived["frame_cleaning"]]
        assert again.metadata["start"]["replay"] is True
        # the same frames cleaned again, bit for bit
        live_clean, again_clean = run["frame_cleaning"], result.run["frame_cleaning"]
        assert (again_clean.n_cleaned, again_clean.n_flagged) == (
            live_clean.n_cleaned,
            live_clean.n_flagged,
        )
        np.testing.assert_array_equal(again["cleaned"]["frame"].read(), _live_cleaned(docs, uid))
        live_dark = next(
            d["data"]["mean"] for n, d in docs if n == "event" and "bad_channels" in d["data"]
        )
        np.testing.assert_array_equal(
            cat[derived["dark_statistics"]]["dark"]["mean"].read()[-1], live_dark
        )
        # the same reconstruction
        live, rep = run["reconstruction"].result, result.run["reconstruction"].result
        region = illuminated_region(live.illumination, 0.3)
        assert rep.iterations == live.iterations
        assert object_error(rep.object, live.object, region) < 1e-4
        # other parameters make another derived run, the raw run is untouched
        other = replay(
            uid, cat, params={"reconstruction": {"algorithm": "lsqml", "final_iterations": 5}}
        )
        algo = cat[other.derived["reconstruction"]].metadata["start"]["pipeline"]
        assert algo["stages"]["reconstruction"]["params"]["algorithm"] == "lsqml"
        with pytest.raises(ValueError, match="derived by the 'frame_cleaning' stage"):
            replay(derived["frame_cleaning"], cat)
    finally:
        cat.close()


def test_the_replay_command_logs_like_a_live_run_and_says_where_its_results_are(
    stored, tmp_path, monkeypatch, capsys
):
    from bluesky_ptycho.cli import main

    folder, uid, _, _ = stored
    monkeypatch.setenv("BLUESKY_PTYCHO_DATA", str(folder))  # the embedded catalog there
    logs = tmp_path / "logs"
    monkeypatch.setenv("BLUESKY_PTYCHO_LOGS", str(logs))
    argv = ["replay", uid[:8], "--set", "reconstruction.final_iterations=4", "--output",
            str(tmp_path / "cxi")]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    # its own log, next to the live run's, telling what it made
    (path,) = logs.glob(f"*_scan1_{uid}-replay.log")
    text = path.read_text()
    assert f"replay of run {uid} (scan 1, plan ptycho_scan) started" in text
    done = next(x for x in text.splitlines() if f"replay of run {uid} (scan 1) done in" in x)
    assert "25 frame(s)" in done and "iteration(s), data error" in done
    cxi = tmp_path / "cxi" / "scan_1.cxi"
    assert cxi.exists() and f"CXI written: {cxi}" in text and "error(s)" not in text
    # its progress: the phases in order, the frames counted as they come out cleaned, and the
    # reconstruction's iterations
    phases = [x.split(":", 1)[0].split(" (", 1)[0] for x in err.splitlines()]
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert order == ["starting", "replay", "final iterations", "saving"], err
    assert "25/25 points" in err and "iteration " in err.split("final iterations", 1)[1]
    # and where to look: the log, the CXI file, the derived runs
    assert f"log:    {path}  (bluesky-ptycho logs {uid[:8]})" in out
    recon = next(x.split()[1] for x in out.splitlines() if x.strip().startswith("reconstruction "))
    assert f"CXI:    {cxi}" in out and f"db['{recon}']" in out
    cat = Catalog(directory=folder)
    try:
        assert cat[recon].metadata["start"]["replay"] is True
    finally:
        cat.close()
    assert main(["logs", uid[:8]]) == 0  # the latest log of the run: the replay's
    assert capsys.readouterr().out == text


def test_a_tiled_server_given_by_uri_and_api_key(tiled_server, tmp_path):
    uri, key, readable = tiled_server
    with pytest.raises(ConnectionError, match="cannot be reached"):
        Catalog(uri, api_key="wrong-key", directory=tmp_path)
    cat = Catalog(uri, api_key=key, directory=tmp_path)
    scan = Scan(cat, readable)
    uid, _ = scan(num_points=9, num_darks=2)
    assert cat.writer.flush(120)
    frames = cat[uid]["primary"]["fccd_image"].read()
    np.testing.assert_array_equal(frames, _frames_on_disk(scan.docs, "primary"))
    assert len(cat.derived(uid)["frame_cleaning"]["cleaned"]["frame"].read()) == 9
    cat.close()


def test_no_document_is_lost_while_the_catalog_is_down(tmp_path, caplog, monkeypatch):
    import tiled.client.utils

    # tiled's client retries a failed request for up to 45 s; 1 s here, so the outage shows
    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_TIMEOUT", 1.0)
    server = TiledServe(tmp_path / "tiled").start()
    cat = Catalog(
        server.uri, api_key=server.api_key, directory=tmp_path / "data", retry_interval=0.5
    )
    scan = Scan(cat, server.read)
    events = []

    def outage(name, doc):  # stop the server at the 6th frame; restart it 3 s later
        if name == "event" and "stage_x" in doc["data"]:
            events.append(doc)
            if len(events) == 6:
                server.stop()
                threading.Timer(3.0, server.start).start()

    scan.RE.subscribe(outage)
    caplog.set_level(logging.WARNING, logger="bluesky_ptycho.storage")
    t0 = time.monotonic()
    uid, _ = scan(num_points=36, num_darks=2)
    status = cat.writer.status()
    assert cat.writer.flush(180), cat.writer.status()
    try:
        assert "cannot be written" in caplog.text  # the operator is told ...
        assert "answers again" in caplog.text  # ... and told when it is back
        sent = {}
        for name, doc in scan.docs:
            if name == "start":
                sent[doc["uid"]] = {}
        names = {d["uid"]: (d["run_start"], d["name"]) for n, d in scan.docs if n == "descriptor"}
        for name, doc in scan.docs:
            if name == "event":
                run_uid, stream = names[doc["descriptor"]]
                sent[run_uid][stream] = sent[run_uid].get(stream, 0) + 1
        for run_uid, streams in sent.items():  # every event of every run is in the catalog, once
            stored = cat[run_uid]
            assert stored.metadata["stop"] is not None
            for stream, n in streams.items():
                assert len(stored[stream].read()["time"]) == n, (run_uid, stream)
        frames = cat[uid]["primary"]["fccd_image"].read()
        assert len(frames) == 36
        assert not list((tmp_path / "data" / "spool").iterdir())
        print(
            f"status during the outage: {status}; all written {time.monotonic() - t0:.1f} s after "
            "the scan began"
        )
    finally:
        cat.close()
        server.stop()


def test_a_spool_left_by_a_dead_process_is_written_by_the_next(stored, tmp_path):
    folder, uid, docs, _ = stored
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True)
    from bluesky_ptycho.io.codec import encode, record

    # the raw run's documents as a process that died before writing them would have left them
    descriptors = {d["uid"] for n, d in docs if n == "descriptor" and d["run_start"] == uid}
    raw = [
        (n, d)
        for n, d in docs
        if (n == "start" and d["uid"] == uid)
        or d.get("run_start") == uid
        or d.get("descriptor") in descriptors
    ]
    with (spool / f"{uid}.spool").open("wb") as f:
        for n, d in raw:
            f.write(b"".join(bytes(b) for b in record(encode(n, d, uid))))
    assert len(read_spool(spool / f"{uid}.spool")) == len(raw)
    cat = Catalog(directory=tmp_path / "data", readable_storage=[folder / "raw"])
    try:
        assert cat.writer.flush(60)
        assert len(cat[uid]["primary"]["fccd_image"].read()) == 25
        assert not (spool / f"{uid}.spool").exists()
    finally:
        cat.close()
