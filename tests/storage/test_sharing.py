"""One data directory, several processes: the embedded catalog is one process's (the next is
told who has it), a killed holder leaves no stale lock, scan ids keep counting across
processes, an ambiguous scan number is refused, and `runs` lists scans and replays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from event_model import compose_run

from bluesky_ptycho.cli import main
from bluesky_ptycho.storage.catalog import Catalog
from bluesky_ptycho.storage.listing import latest_runs
from bluesky_ptycho.storage.lock import CatalogInUse, CatalogLock, in_use_message
from bluesky_ptycho.storage.scans import AmbiguousScan, ScanCounter

ROOT = Path(__file__).parents[2]


def _python(code: str, **env: str) -> subprocess.Popen:
    """A second Python process running *code*, its stdout a pipe."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def _wait_for(proc: subprocess.Popen, word: str, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if word in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}): {proc.stderr.read()}")  # type: ignore[union-attr]
    raise AssertionError(f"no {word!r} within {timeout} s")


def _kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def test_a_hand_edited_lock_file_still_gives_the_message(tmp_path):
    """The lock file holds the holder's words; odd ones give '?', not a traceback."""
    for since in (1e300, "yesterday", None, [1]):
        text = in_use_message(tmp_path, {"pid": 1, "since": since})
        assert "process 1 (command unknown) has it open since ?" in text, since


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = _python(
        f"""
        import time
        from bluesky_ptycho.storage.lock import CatalogLock
        CatalogLock({str(tmp_path)!r}).acquire()
        print("HELD", flush=True)
        time.sleep(600)
        """
    )
    try:
        _wait_for(holder, "HELD", 60)
        lock = CatalogLock(tmp_path)
        assert lock.holder()["pid"] == holder.pid
        with pytest.raises(CatalogInUse) as err:
            lock.acquire()
        message = str(err.value)
        assert f"process {holder.pid} (python -c" in message and "since 20" in message
        assert "BLUESKY_PTYCHO_CATALOG" in message and "BLUESKY_PTYCHO_DATA" in message
    finally:
        _kill9(holder)
    # kill -9 left the file and its words, but not the lock: the next one takes it at once
    assert (tmp_path / "catalog.lock").read_text()
    assert lock.holder() is None
    with CatalogLock(tmp_path) as mine:
        assert mine.held and mine.holder()["pid"] == os.getpid()
    assert not (tmp_path / "catalog.lock").read_text()  # released: says nobody holds it


def _store_run(writer, scan_id: int, **md) -> str:  # type: ignore[no-untyped-def]
    """A small raw run, through the real catalog writer; its uid."""
    run = compose_run(metadata={"scan_id": scan_id, "plan_name": "count", **md})
    writer("start", run.start_doc)
    desc = run.compose_descriptor(
        name="primary", data_keys={"x": {"source": "sim", "dtype": "number", "shape": []}}
    )
    writer("descriptor", desc.descriptor_doc)
    for i in range(3):
        writer("event", desc.compose_event(data={"x": i}, timestamps={"x": time.time()}))
    writer("stop", run.compose_stop())
    return run.start_doc["uid"]


def _store_derived(writer, source: str, stage: str, **md) -> str:  # type: ignore[no-untyped-def]
    run = compose_run(metadata={"source_run": source, "stage": stage, **md})
    writer("start", run.start_doc)
    writer("stop", run.compose_stop())
    return run.start_doc["uid"]


@pytest.mark.slow
def test_a_second_process_on_an_embedded_catalog_is_refused_until_the_first_is_killed(
    tmp_path, monkeypatch, capsys
):
    data = tmp_path / "data"
    monkeypatch.setenv("BLUESKY_PTYCHO_DATA", str(data))
    # the first process: a catalog holding two raw runs numbered 5 (as two sessions before
    # the shared counter made them), a run a stage derived, and a replay's two runs
    holder = _python(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_sharing import _store_run, _store_derived
        from bluesky_ptycho.storage.catalog import Catalog
        cat = Catalog()
        a = _store_run(cat.writer, 5, ptycho={{"num_points": 3}})
        _store_derived(cat.writer, a, "dark_statistics", scan_id=5)  # (as stored before)
        b = _store_run(cat.writer, 5)
        for stage in ("reconstruction", "frame_cleaning"):
            _store_derived(cat.writer, a, stage, replay=True, replay_id="r1", source_scan_id=5)
        assert cat.writer.flush(120)
        print("READY", a, b, flush=True)
        time.sleep(600)
        """
    )
    try:
        _wait_for(holder, "READY")
        # a second writer is refused, naming the first and what to do
        with pytest.raises(CatalogInUse, match=f"process {holder.pid} .*Tiled server"):
            Catalog()
        for command in (["replay", "5"], ["serve"]):  # the back-end as well
            assert main(command) == 2
            err = capsys.readouterr().err
            assert f"bluesky-ptycho {command[0]}: the embedded catalog in {data / 'catalog'} is " \
                   f"in use: process {holder.pid}" in err and "Traceback" not in err  # fmt: skip
        # a reader is not: `runs` lists the scans and the replay (marked), not the derived run
        assert main(["runs"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].split() == ["UID", "KIND", "SCAN", "STARTED", "POINTS", "STATUS"]
        kinds = [line.split()[1] for line in out[1:]]
        assert kinds == ["scan", "scan", "replay"], out
        replay = out[3].split()
        assert replay[2] == "5" and replay[5] == "3" and "2 runs" in out[3], out
    finally:
        _kill9(holder)
    # killed with -9 mid-session: the next process opens the catalog at once
    cat = Catalog()
    try:
        with pytest.raises(AmbiguousScan) as err:
            cat[5]
        message = str(err.value)
        starts = [r.metadata["start"] for r in cat.raw_runs()]
        assert all(s["uid"] in message for s in starts) and len(starts) == 2
        assert "start of a uid" in message
        assert cat[-1].metadata["start"]["uid"] == starts[-1]["uid"]  # a raw run, not derived
    finally:
        cat.close()
    assert main(["replay", "5"]) == 2
    err = capsys.readouterr().err
    assert "scan 5 is ambiguous" in err and starts[0]["uid"] in err and "Traceback" not in err
    # the counter of this data directory starts after the numbers the catalog holds
    counter = ScanCounter()
    assert counter({}) == 6
    # a counter edited by hand never hands out a number the catalog holds, nor one past
    # what JSON keeps exactly: lowered, garbled, a digit int() refuses, far too long
    for text in ("2", "0", "\u00b2", "\u0663", "9" * 70, str(2**63)):
        counter.path.write_text(text, encoding="utf-8")
        assert counter({}) == 6, text


def test_scan_ids_count_on_across_processes(tmp_path):
    """Four processes, each a RunEngine taking five scans at once: twenty distinct numbers,
    and the next session goes on from there."""
    code = f"""
        from bluesky import RunEngine
        from bluesky.plans import count
        from bluesky_ptycho.storage.scans import ScanCounter
        RE = RunEngine({{}}, scan_id_source=ScanCounter({str(tmp_path)!r}))
        ids = []
        RE.subscribe(lambda n, d: ids.append(d["scan_id"]) if n == "start" else None)
        for _ in range(5):
            RE(count([]))
        print("IDS", *ids, flush=True)
        """
    procs = [_python(code) for _ in range(4)]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        ids += [int(v) for v in out.split("IDS")[1].split()]
    assert sorted(ids) == list(range(1, 21))
    assert ScanCounter(tmp_path).last() == 20
    assert ScanCounter(tmp_path)({"scan_id": 3}) == 21  # a session's older RE.md does not rewind
    assert ScanCounter(tmp_path)({"scan_id": 40}) == 41  # nor is a higher one overtaken


def test_logs_refuses_an_ambiguous_scan_number_listing_the_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BLUESKY_PTYCHO_LOGS", str(tmp_path))
    (tmp_path / "20261201-100000_scan1_aaaa1111-0000.log").write_text("demo\n")
    (tmp_path / "20261201-110000_scan1_bbbb2222-0000.log").write_text("session\n")
    assert main(["logs", "1"]) == 2
    err = capsys.readouterr().err
    assert "scan 1 is ambiguous: 2 runs" in err
    assert "aaaa1111-0000 started 2026-12-01 10:00:00" in err and "bbbb2222-0000" in err
    assert "e.g. bbbb2222" in err and "Traceback" not in err
    assert main(["logs", "bbbb2222"]) == 0 and capsys.readouterr().out == "session\n"
    # a run and its replay share a number without being two scans: the latest log is shown
    (tmp_path / "20261201-100000_scan1_aaaa1111-0000.log").unlink()
    (tmp_path / "20261201-120000_scan1_bbbb2222-0000-replay.log").write_text("replay\n")
    assert main(["logs", "1"]) == 0 and capsys.readouterr().out == "replay\n"


def test_runs_without_a_catalog_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BLUESKY_PTYCHO_DATA", str(tmp_path / "empty"))
    assert main(["runs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("UID") and out[1].startswith(f"(no catalog in {tmp_path / 'empty'}")
    for n in ("0", "-1", str(10**20)):  # (10**20 overflowed SQLite's integer: a traceback)
        assert main(["runs", "-n", n]) == 2
        err = capsys.readouterr().err
        assert f"runs -n {n}: give a number of runs from 1 to 1000000" in err, err
    with pytest.raises(ValueError, match="at least one"):
        latest_runs(0)


@pytest.mark.slow
def test_runs_lists_scans_and_replays_from_a_tiled_server(tiled_server, tmp_path, capsys):
    uri, key, _read = tiled_server
    cat = Catalog(uri, api_key=key, directory=tmp_path)
    try:
        a = _store_run(cat.writer, 7, ptycho={"num_points": 3})
        _store_derived(cat.writer, a, "dark_statistics", source_scan_id=7)
        b = _store_run(cat.writer, 8)
        for stage in ("frame_cleaning", "reconstruction"):
            _store_derived(cat.writer, a, stage, replay=True, replay_id="r2", source_scan_id=7)
        assert cat.writer.flush(120)
        assert cat[-1].metadata["start"]["uid"] == b and cat[7].metadata["start"]["uid"] == a
        assert sorted(cat.databroker[-1].v2) == ["primary"]
    finally:
        cat.close()
    assert main(["runs", "--catalog", uri, "--api-key", key]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out[1:]]
    assert out[0].startswith("UID") and [r[:3] for r in rows[-3:]] == [
        [a, "scan", "7"], [b, "scan", "8"], [rows[-1][0], "replay", "7"]
    ]  # fmt: skip
    assert rows[-1][0] != a and f"(of {a[:8]}, 2 runs)" in out[-1]
