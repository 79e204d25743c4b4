"""The frames' disk guard on a real RunEngine: it pauses a run while the disk's real free space
is short of what it needs, resumes it when there is room, and fails it after its wait; a plan
started while it is tripped waits, and is refused once the wait runs out."""

from __future__ import annotations

import threading
import time

import pytest
from bluesky import RunEngine
from bluesky import plan_stubs as bps

from bluesky_ptycho.storage.guard import FramesDiskFull, FramesDiskGuard

IMPOSSIBLE = 2**60  # more bytes than any disk holds


def _plan(steps: int):
    yield from bps.open_run()
    for _ in range(steps):
        yield from bps.checkpoint()
        yield from bps.sleep(0.05)
    yield from bps.close_run()


def _scan(tmp_path, docs, *, short_at: float | None, room_at: float | None, steps: int = 30):
    """Run *steps* checkpoints 50 ms apart; the disk turns short at *short_at* s (None: before
    the plan starts) and has room again at *room_at* s (None: never). The guard's thresholds
    are moved instead of the disk's contents; its free space is the disk's own."""
    guard = FramesDiskGuard(tmp_path, frame_bytes=1, frames_ahead=1, give_up=1.0, interval=0.05)
    need, resume_at = guard.need, guard.resume_at
    RE = RunEngine({}, context_managers=[])
    guard.install(RE)
    RE.subscribe(lambda name, doc: docs.append((name, doc)))

    def short() -> None:
        guard.need = guard.resume_at = IMPOSSIBLE

    def room() -> None:
        guard.need, guard.resume_at = need, resume_at

    if short_at is None:
        short()
        deadline = time.monotonic() + 5
        while guard.ok.get() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert guard.ok.get() == 0
    else:
        threading.Timer(short_at, short).start()
    if room_at is not None:
        threading.Timer(room_at, room).start()
    t0 = time.monotonic()
    try:
        RE(_plan(steps))
    finally:
        took = time.monotonic() - t0
        guard.close()
        assert not guard._watch.is_alive() and not RE.suspenders
    return took


def test_a_running_scan_pauses_while_the_disk_is_short_and_goes_on_when_there_is_room(tmp_path):
    docs: list = []
    took = _scan(tmp_path, docs, short_at=0.4, room_at=1.2)
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "success"
    assert 2.0 < took < 4.5  # 30 steps of 50 ms plus the pause (0.8 s), not the give-up


def test_a_running_scan_fails_with_the_reason_in_its_stop_document_when_the_disk_stays_short(
    tmp_path,
):
    docs: list = []
    with pytest.raises(FramesDiskFull, match=r"the frames' disk \(.*\) stayed full for 1 s"):
        _scan(tmp_path, docs, short_at=0.4, room_at=None)
    assert [n for n, _ in docs].count("start") == 1
    stop = next(d for n, d in docs if n == "stop")
    assert stop["exit_status"] == "fail" and "stayed full for 1 s" in stop["reason"]
    assert "MiB free" in stop["reason"]


def test_a_scan_started_on_a_short_disk_waits_then_is_refused(tmp_path):
    docs: list = []
    with pytest.raises(FramesDiskFull, match="stayed full for 1 s"):
        _scan(tmp_path, docs, short_at=None, room_at=None)
    assert docs == []  # refused before it opened a run


def test_a_scan_started_on_a_short_disk_begins_when_there_is_room(tmp_path):
    docs: list = []
    took = _scan(tmp_path, docs, short_at=None, room_at=0.6, steps=5)
    assert [n for n, _ in docs].count("start") == 1 and 0.5 < took < 1.5


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
