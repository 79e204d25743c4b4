"""The frames' disk guard on a real RunEngine: it pauses a run while the disk's real free space
is short of what it needs, resumes it when there is room, and fails it after its wait."""

from __future__ import annotations

import threading
import time

import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps

from bluesky_ptycho.storage.guard import FramesDiskFull, FramesDiskGuard


def _plan(steps: int = 10):
    yield from bps.open_run()
    for _ in range(steps):
        yield from bps.checkpoint()
        yield from bps.sleep(0.02)
    yield from bps.close_run()


def _run(tmp_path, space_after: float | None):
    guard = FramesDiskGuard(tmp_path, frame_bytes=1, frames_ahead=1, give_up=2.0, interval=0.05)
    room = guard.need
    RE = RunEngine({}, context_managers=[])
    guard.install(RE)
    stops: list[dict] = []
    RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
    guard.need = guard.free() + 2**50  # more than the disk holds: the guard trips
    deadline = time.monotonic() + 5
    while guard.ok.get() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert guard.ok.get() == 0
    if space_after is not None:
        threading.Timer(space_after, lambda: setattr(guard, "need", room)).start()
    t0 = time.monotonic()
    try:
        RE(_plan())
    finally:
        guard.close()
    return time.monotonic() - t0, stops


def test_the_run_waits_while_the_disk_is_short_and_goes_on_when_there_is_room(tmp_path):
    waited, stops = _run(tmp_path, space_after=0.8)
    assert 0.7 < waited < 2.0  # paused until the room came back, not until the guard gave up
    assert stops[-1]["exit_status"] == "success"


def test_the_run_fails_naming_the_folder_when_the_disk_stays_short(tmp_path):
    with pytest.raises(FramesDiskFull, match=r"the frames' disk \(.*\) stayed full for 2 s"):
        _run(tmp_path, space_after=None)


@pytest.mark.parametrize(
    "kwargs, said",
    [
        ({"frame_bytes": 0}, "frame_bytes=0"),
        ({"frame_bytes": 10, "frames_ahead": 0}, "frames_ahead=0"),
        ({"frame_bytes": 10, "interval": 0.0}, "interval=0.0"),
        ({"frame_bytes": 10, "give_up": -1.0}, "give_up=-1.0"),
    ],
)
def test_bad_settings_are_refused_naming_them(tmp_path, kwargs, said):
    with pytest.raises(ValueError, match=said):
        FramesDiskGuard(tmp_path, **kwargs)
