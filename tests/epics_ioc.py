"""``bluesky-ptycho ioc`` as a subprocess on its own Channel Access port, for the tests.

One port for the whole test session (the Channel Access client of the test
process reads its address list once); one IOC at a time, started and killed
by pid around each test that needs it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_ca_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (Channel Access uses both)."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port for Channel Access")


def ca_environment(port: int) -> dict[str, str]:
    """The EPICS variables that keep a client and the IOC on 127.0.0.1:*port*."""
    return {
        "EPICS_CA_SERVER_PORT": str(port),
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    }


class Ioc:
    """``bluesky-ptycho ioc ARGS`` on 127.0.0.1:*port*, its output in *log*."""

    def __init__(self, port: int, log: Path, args: list[str] | None = None) -> None:
        self.port = port
        self.log = Path(log)
        self.args = list(args or [])
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> Ioc:
        exe = Path(sys.executable).with_name("bluesky-ptycho")
        env = {**os.environ, **ca_environment(self.port)}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [str(exe), "ioc", *self.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while "Server startup complete" not in self.log.read_text():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the IOC exited ({self.proc.returncode}): {self.log.read_text()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the IOC did not start in {timeout} s: {self.log.read_text()}")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        """SIGKILL, as when the IOC's host dies (no clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""
