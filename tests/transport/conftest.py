"""An in-process back-end (Server + Pipeline on free ports) for the transport tests."""

from __future__ import annotations

import threading

import pytest
from tiled_serve import free_port

from bluesky_ptycho.pipeline.runner import Pipeline
from bluesky_ptycho.transport.server import Server


@pytest.fixture
def local_server(tmp_path):
    servers = []

    def make(pipeline: Pipeline | None = None, **kwargs) -> Server:
        pipe = pipeline if pipeline is not None else Pipeline(output_dir=None)
        kwargs = {"port": free_port(), "control_port": free_port(), "snapshot_port": free_port(),
                  **kwargs}  # fmt: skip
        server = Server(pipe, **kwargs)
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        servers.append((server, thread, pipe))
        return server

    yield make
    for server, thread, pipe in servers:
        server.stop()
        thread.join(10)
        server.close()
        pipe.close()
