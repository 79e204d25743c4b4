"""A back-end (``bluesky-ptycho serve``) in a process of its own, and a beamline that publishes
to it, for the tests that run the remote pipeline over real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bluesky import RunEngine
from tiled_serve import free_port

from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD
from bluesky_ptycho.transport import address
from bluesky_ptycho.transport.control import ControlError, request
from bluesky_ptycho.transport.publisher import Publisher

PIPELINE = """
[pipeline]
device = "cpu"
cxi = true

[stages.dark_statistics]
inputs = ["raw"]

[stages.frame_cleaning]
inputs = ["raw", "dark_statistics"]
where = "dask"
params = { batch_size = 4 }

[stages.stxm]
inputs = ["frame_cleaning"]

[stages.reconstruction]
inputs = ["frame_cleaning", "stxm"]
params = { final_iterations = 5, min_frames = 8 }

[stages.quality]
inputs = ["frame_cleaning", "reconstruction"]
"""


class Backend:
    """``bluesky-ptycho serve`` in a process of its own, on free ports."""

    def __init__(self, folder: Path, *extra: str, workers: int = 2, ports=None) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        pipeline = folder / "pipeline.toml"
        pipeline.write_text(PIPELINE)
        self.port, self.control_port = ports or (free_port(), free_port())
        self.results = address("127.0.0.1", free_port())
        self.address = address("127.0.0.1", self.port)
        self.control = address("127.0.0.1", self.control_port)
        env = {
            **os.environ,
            "BLUESKY_PTYCHO_DATA": str(folder / "data"),
            "BLUESKY_PTYCHO_LOGS": str(folder / "logs"),
        }
        cmd = [
            str(Path(sys.executable).with_name("bluesky-ptycho")),
            "serve",
            "--pipeline",
            str(pipeline),
            "--listen",
            self.address,
            "--control",
            self.control,
            "--results",
            self.results,
            "--workers",
            str(workers),
            "--max-in-flight",
            "8",
            # the "beamline's shared storage": every test's folder lies under pytest's base folder
            "--data-root",
            str(folder.parent),
            *extra,
        ]
        self.log = (folder / "serve.log").open("ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (folder / "serve.log").read_text()
            try:
                request("ping", self.control, timeout=1)
                return
            except ControlError:
                time.sleep(0.3)
        raise TimeoutError((folder / "serve.log").read_text())

    def status(self) -> dict:
        return request("status", self.control, timeout=10)["status"]

    def wait_finished(self, uid: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.status()["runs"].get(uid)
            if run is not None and run["finished"]:
                return run
            time.sleep(0.5)
        raise TimeoutError(f"run {uid} not finished: {self.status()}")

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def log_text(self) -> str:
        return (self.folder / "serve.log").read_text()


def beamline(raw_dir: Path, publisher: Publisher, catalog=None):
    RE = RunEngine({})
    stage, shutter = SampleStage(name="stage"), Shutter(name="shutter")
    fccd = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=raw_dir)
    if catalog is not None:
        RE.subscribe(catalog.writer)
    RE.subscribe(publisher)
    return RE, fccd, stage, shutter
