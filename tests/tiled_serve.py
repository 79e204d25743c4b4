"""A real ``tiled serve`` process on localhost, for the tests that need a Tiled server.

``.ci/run`` starts one before the tests (``python tests/tiled_serve.py``)
and passes it in ``BLUESKY_PTYCHO_TEST_TILED`` (URI), ``..._KEY`` and
``..._READ`` (the folder it may read detector files from); where those are
not set, the tests start their own.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TiledServe:
    """``tiled serve catalog`` on 127.0.0.1 with its catalog, data and readable folder in *folder*."""

    def __init__(self, folder: Path, port: int | None = None, api_key: str | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.port = port or free_port()
        self.api_key = api_key or secrets.token_hex(16)
        self.read = self.folder / "raw"
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> TiledServe:
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        self.read.mkdir(parents=True, exist_ok=True)
        db = self.folder / "catalog.db"
        tiled = Path(sys.executable).with_name("tiled")
        # `tiled serve config`: the catalog as `tiled serve catalog` makes it, plus the
        # BlueskyRun document exporter that replay and a restarted back-end read runs with
        config = self.folder / "tiled.yml"
        config.write_text(
            json.dumps(
                {
                    "authentication": {"single_user_api_key": self.api_key},
                    "trees": [
                        {
                            "path": "/",
                            "tree": "catalog",
                            "args": {
                                "uri": f"sqlite:///{db}",
                                "init_if_not_exists": True,
                                "writable_storage": [
                                    str(self.folder / "data"),
                                    f"duckdb:///{self.folder / 'storage.duckdb'}",
                                ],
                                "readable_storage": [str(self.read)],
                            },
                        }
                    ],
                    "media_types": {
                        "BlueskyRun": {
                            "application/json-seq": "bluesky_tiled_plugins.exporters:json_seq_exporter"
                        }
                    },
                    "uvicorn": {"host": "127.0.0.1", "port": self.port},
                }
            )
        )
        cmd = [str(tiled), "serve", "config", str(config)]
        log = (self.folder / "tiled.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"tiled serve exited ({self.proc.returncode}); see {self.folder / 'tiled.log'}"
                )
            try:
                if httpx.get(f"{self.uri}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"tiled serve did not answer on {self.uri} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


if __name__ == "__main__":  # .ci/run: serve until killed; print the environment for the tests
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that `finally` stops the server
    server = TiledServe(Path(sys.argv[1])).start()
    print(
        f"export BLUESKY_PTYCHO_TEST_TILED={server.uri} BLUESKY_PTYCHO_TEST_TILED_KEY="
        f"{server.api_key} BLUESKY_PTYCHO_TEST_TILED_READ={server.read}",
        flush=True,
    )
    try:
        server.proc.wait()  # type: ignore[union-attr]
    finally:
        server.stop()
