"""ptycho_scan through bluesky-queueserver: a real RE Manager (with the Redis server it needs)
whose worker starts from the profile, with the EPICS devices of ``bluesky-ptycho ioc`` over
Channel Access, the live pipeline subscribed and the runs stored in a real Tiled server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from epics_ioc import Ioc, ca_environment, free_ca_port
from tiled_serve import free_port

from bluesky_ptycho.storage.catalog import Catalog

PROFILES = Path(__file__).parents[2] / "profiles"
REDIS = shutil.which("redis-server")


def _stop(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited ({proc.returncode}): {log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}: {log.read_text()}")


@pytest.mark.slow
@pytest.mark.skipif(REDIS is None, reason="no redis-server binary (apt-get install redis-server)")
def test_ptycho_scan_from_the_queue_server_with_epics_devices(tmp_path, tiled_server):
    from bluesky_queueserver_api import BPlan
    from bluesky_queueserver_api.zmq import REManagerAPI

    uri, key, readable = tiled_server
    ca_port = free_ca_port()
    redis_port, control_port, info_port = free_port(), free_port(), free_port()
    pipeline_file = tmp_path / "pipeline.toml"
    default = (
        Path(__file__).parents[2] / "bluesky_ptycho" / "pipeline" / "default.toml"
    ).read_text()
    pipeline_file.write_text(default.replace("final_iterations = 40", "final_iterations = 20"))
    existing = tmp_path / "existing_plans_and_devices.yaml"
    shutil.copy(PROFILES / "existing_plans_and_devices.yaml", existing)

    ioc = Ioc(ca_port, tmp_path / "ioc.log", ["--interfaces", "127.0.0.1"])
    redis = manager = None
    RM = None
    try:
        ioc.start()
        redis_log = tmp_path / "redis.log"
        with redis_log.open("w") as out:
            redis = subprocess.Popen(
                [REDIS, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(tmp_path)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait_port(redis_port, redis, redis_log)

        env = {
            **os.environ,
            **ca_environment(ca_port),
            "BLUESKY_PTYCHO_DEVICES": "epics",
            "BLUESKY_PTYCHO_CATALOG": uri,
            "BLUESKY_PTYCHO_API_KEY": key,
            "BLUESKY_PTYCHO_DATA": str(readable.parent),  # the raw frames in its readable folder
            "BLUESKY_PTYCHO_PIPELINE": str(pipeline_file),
        }
        manager_log = tmp_path / "re-manager.log"
        with manager_log.open("w") as out:
            manager = subprocess.Popen(
                [
                    Path(sys.executable).with_name("start-re-manager"),
                    "--startup-dir", PROFILES / "profile_ptycho" / "startup",
                    "--existing-plans-devices", existing,
                    "--update-existing-plans-devices", "ENVIRONMENT_OPEN",
                    "--user-group-permissions", PROFILES / "user_group_permissions.yaml",
                    "--redis-addr", f"127.0.0.1:{redis_port}",
                    "--zmq-control-addr", f"tcp://127.0.0.1:{control_port}",
                    "--zmq-info-addr", f"tcp://127.0.0.1:{info_port}",
                    "--zmq-publish-console", "ON",
                ],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
            )  # fmt: skip
        RM = REManagerAPI(
            zmq_control_addr=f"tcp://127.0.0.1:{control_port}",
            zmq_info_addr=f"tcp://127.0.0.1:{info_port}",
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                RM.status()
                break
            except Exception:
                assert manager.poll() is None, manager_log.read_text()
                assert time.monotonic() < deadline, manager_log.read_text()
                time.sleep(0.5)

        RM.environment_open()
        RM.wait_for_idle(timeout=180)
        status = RM.status()
        assert status["worker_environment_exists"], manager_log.read_text()
        assert "ptycho_scan" in RM.plans_allowed()["plans_allowed"]
        assert {"fccd", "stage", "shutter"} <= set(RM.devices_allowed()["devices_allowed"])

        # a bad value is refused by the queue server's validation, before anything runs
        with pytest.raises(RM.RequestFailedError, match=r"(?s)num_points.*valid integer"):
            RM.item_add(BPlan("ptycho_scan", "fccd", "stage", "shutter", num_points="many"))

        RM.item_add(BPlan("ptycho_scan", "fccd", "stage", "shutter", num_points=12, num_darks=2))
        RM.queue_start()
        RM.wait_for_idle(timeout=300)
        history = RM.history_get()["items"]
        result = history[-1]["result"]
        assert result["exit_status"] == "completed", (result, manager_log.read_text()[-4000:])
        (uid,) = result["run_uids"]

        # the run and what the live pipeline derived from it, in the Tiled server
        cat = Catalog(uri, api_key=key, directory=tmp_path / "client")
        deadline = time.monotonic() + 240
        while True:
            try:
                derived = cat.derived(uid)
                if "reconstruction" in derived and "snapshot" in derived["reconstruction"]:
                    stop = derived["reconstruction"].metadata.get("stop") or {}
                    if stop.get("exit_status") == "success":
                        break
            except Exception:
                pass
            assert time.monotonic() < deadline, manager_log.read_text()[-4000:]
            time.sleep(1.0)
        run = cat[uid]
        assert run.metadata["start"]["ptycho"]["x_units"] == "um"
        assert run.metadata["start"]["detectors"] == ["fccd"]
        assert len(run["primary"]["fccd_image"].read()) == 12
        assert len(derived["frame_cleaning"]["cleaned"]["frame"].read()) == 12
        cat.close()
        RM.environment_close()
        RM.wait_for_idle(timeout=60)
    finally:
        if RM is not None:
            RM.close()
        _stop(manager)
        _stop(redis)
        ioc.stop()
