"""Shared fixtures: array backends (NumPy always, CuPy where a GPU is present); a real
`tiled serve` for the tests that store over HTTP."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from tiled_serve import TiledServe

# Channel Access of every test (the EPICS devices, caproto-get, the IOC, the queue server's
# worker) stays on this machine: searches go to 127.0.0.1 only, never broadcast.
os.environ["EPICS_CA_ADDR_LIST"] = "127.0.0.1"
os.environ["EPICS_CA_AUTO_ADDR_LIST"] = "NO"
os.environ["EPICS_CAS_INTF_ADDR_LIST"] = "127.0.0.1"
os.environ["EPICS_CAS_BEACON_ADDR_LIST"] = "127.0.0.1"
os.environ["EPICS_CAS_AUTO_BEACON_ADDR_LIST"] = "NO"


def _cupy_or_none():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:
        return None
    return None


CUPY = _cupy_or_none()


@pytest.fixture(
    params=[
        pytest.param(np, id="numpy"),
        pytest.param(
            CUPY,
            id="cupy",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(CUPY is None, reason="CuPy with a CUDA device is not available"),
            ],
        ),
    ]
)
def xp(request):
    """The array module under test."""
    return request.param


@pytest.fixture(autouse=True)
def _user_dirs(tmp_path_factory, monkeypatch):
    """Catalogs, spools and run logs of the tests go to temporary folders, never the user's."""
    base = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("BLUESKY_PTYCHO_DATA", str(base / "data"))
    monkeypatch.setenv("BLUESKY_PTYCHO_LOGS", str(base / "logs"))
    monkeypatch.delenv("BLUESKY_PTYCHO_CATALOG", raising=False)
    monkeypatch.delenv("BLUESKY_PTYCHO_API_KEY", raising=False)


@pytest.fixture
def tiled_server(tmp_path):
    """The server .ci/run started, or one of our own (a real `tiled serve` either way)."""
    if os.environ.get("BLUESKY_PTYCHO_TEST_TILED"):
        yield (
            os.environ["BLUESKY_PTYCHO_TEST_TILED"],
            os.environ["BLUESKY_PTYCHO_TEST_TILED_KEY"],
            Path(os.environ["BLUESKY_PTYCHO_TEST_TILED_READ"]),
        )
        return
    server = TiledServe(tmp_path / "tiled").start()
    yield server.uri, server.api_key, server.read
    server.stop()
