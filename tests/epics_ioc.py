"""``bluesky-ptycho ioc`` as a subprocess on its own Channel Access port, for the tests.

One port for the whole test session (the Channel Access client of the test
process reads its address list once); one IOC at a time, started and killed
by pid around each test that needs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bluesky_ptycho.apps.ioc import free_ca_port
from bluesky_ptycho.apps.ioc import local_ca_environment as ca_environment

__all__ = ["Ioc", "ca_environment", "free_ca_port"]


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
