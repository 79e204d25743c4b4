"""Frame cleaning on a real local Dask cluster (its actors) gives what cleaning in the process
gives: every frame once, in scan order, the same photons and the same flags."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine

from bluesky_ptycho.acquisition.plans import ptycho_scan
from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD
from bluesky_ptycho.pipeline.runner import Pipeline

PIPELINE = """
[pipeline]
device = "cpu"
cxi = false

[stages.dark_statistics]
inputs = ["raw"]

[stages.frame_cleaning]
inputs = ["raw", "dark_statistics"]
where = "{where}"
params = {{ batch_size = {batch}, frame_px = 256 }}
"""


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """The documents of a real 30-point scan with two planted faults (frames in HDF5)."""
    folder = tmp_path_factory.mktemp("raw")
    RE = RunEngine({})
    docs: list = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    stage, shutter = SampleStage(name="stage"), Shutter(name="shutter")
    fccd = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=folder)
    fccd.faults = {7: "corrupt", 19: "saturate"}
    RE(ptycho_scan(fccd, stage, shutter, num_points=30, step=100e-9, num_darks=4))
    return docs


def cleaned(docs, tmp_path, where: str, batch: int, client=None) -> list[dict]:
    spec = tmp_path / f"{where}.toml"
    spec.write_text(PIPELINE.format(where=where, batch=batch))
    pipe = Pipeline(spec, client=client, max_in_flight=3 * batch)
    events: list[dict] = []
    streams: dict[str, str] = {}

    def collect(name: str, doc: dict) -> None:
        if name == "descriptor":
            streams[doc["uid"]] = doc["name"]
        elif name == "event" and streams.get(doc["descriptor"]) == "cleaned":
            events.append(doc["data"])

    pipe.subscribe(collect)
    try:
        for name, doc in docs:
            pipe(name, doc)
        run = pipe.wait(docs[0][1]["uid"], timeout=300)
        assert all(not e for e in run.errors.values()), run.errors
        status = run.by_stage("frame_cleaning").status()
    finally:
        pipe.close()
    return events, status


def test_cleaning_on_dask_actors_equals_cleaning_in_the_process(scan, tmp_path):
    from bluesky_ptycho.pipeline.dask import connect, shutdown

    here, _ = cleaned(scan, tmp_path, "process", batch=4)
    client = connect(workers=2)
    try:
        there, status = cleaned(scan, tmp_path, "dask", batch=4, client=client)
    finally:
        shutdown(client)
    assert [e["point"] for e in there] == list(range(30))  # each once, in scan order
    assert [e["point"] for e in here] == list(range(30))
    # the first batch is cleaned in the process (it fixes the centre); the rest went to both
    # workers' actors, which read only the rows of the frame the crop needs
    assert status["workers"]["actors"] == 0  # released at the run's end
    assert status["workers"]["frames"] == 30 - 4 and status["workers"]["calls"] >= 2
    for a, b in zip(here, there, strict=True):
        assert (a["valid"], a["flag"]) == (b["valid"], b["flag"])
        # the same steps on the same samples; only float32 rounding differs (the workers'
        # BLAS and FFTs run on one thread, this process's on several: sums in another
        # order), at the resolution of a float32 transform of the whole pattern
        np.testing.assert_allclose(b["frame"], a["frame"], rtol=1e-4, atol=1e-6 * a["photons"])
        assert b["photons"] == pytest.approx(a["photons"], rel=1e-5)
        assert b["ripple_adu"] == pytest.approx(a["ripple_adu"], rel=1e-3, abs=1e-3)
    flags = {e["point"]: e["flag"] for e in there if e["flag"]}
    assert set(flags) == {7, 19}, flags
    assert "lost" in flags[7] and "saturated" in flags[19]
