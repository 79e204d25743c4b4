"""No document lost: a scan killed with SIGKILL, a spool on a full disk, a spool file made to
run code. Each test runs the real demo in a process of its own and checks the catalog."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import msgpack
import pytest

from bluesky_ptycho.storage.catalog import Catalog
from bluesky_ptycho.storage.writer import SUFFIX, overflow_dirs, read_spool_file

CLI = str(Path(sys.executable).with_name("bluesky-ptycho"))


def _env(data: Path, logs: Path) -> dict:
    return {**os.environ, "BLUESKY_PTYCHO_DATA": str(data), "BLUESKY_PTYCHO_LOGS": str(logs),
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def _missing(cat: Catalog, uid: str, docs: list[tuple[str, dict]]) -> list[str]:
    """What of run *uid*'s spooled documents the catalog does not hold: its start, each
    stream's events (by sequence number) and each stream's frames (by index)."""
    run = cat.runs[uid]
    out = [] if run.metadata["start"]["uid"] == uid else ["start"]
    streams = {d["uid"]: d.get("name") for n, d in docs if n == "descriptor"}
    keys = {d["uid"]: d["data_key"] for n, d in docs if n == "stream_resource"}
    seqs: dict[str, set] = {}
    frames: dict[tuple[str, str], int] = {}
    for name, d in docs:
        if name in ("event", "event_page"):
            s = d["seq_num"]
            seqs.setdefault(streams[d["descriptor"]], set()).update(
                s if isinstance(s, list) else [s]
            )
        elif name == "stream_datum":
            k = (streams[d["descriptor"]], keys[d["stream_resource"]])
            frames[k] = max(frames.get(k, 0), d["seq_nums"]["stop"] - 1)
    for stream, want in seqs.items():
        have = set(run[stream]["seq_num"].read().tolist()) if stream in run else set()
        out += [f"{stream} event {s}" for s in sorted(want - have)]
    for (stream, key), n in frames.items():
        have = run[stream][key].shape[0] if stream in run and key in run[stream] else 0
        out += [f"{stream} {key} frames {have} of {n}"] if have < n else []
    return out


@pytest.mark.slow
def test_a_scan_killed_with_sigkill_loses_no_document(tmp_path):
    """kill -9 the demo mid-scan; the next session's catalog holds every document spooled
    before the kill (0 missing), each run closed with exit_status 'fail', and every frame a
    stored reference names is in its file."""
    data, logs = tmp_path / "data", tmp_path / "logs"
    proc = subprocess.Popen(
        [CLI, "demo", "--points", "80", "--darks", "5", "--quiet", "--output", str(tmp_path / "out")],
        env=_env(data, logs), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    spool = data / "spool"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:  # kill once the raw run has 20 frames spooled
            assert proc.poll() is None, proc.stdout.read().decode()
            raw = [p for p in spool.glob(f"*{SUFFIX}") if _is_raw(p)]
            if raw and sum(n == "event" for n, _ in read_spool_file(raw[0])[0]) >= 25:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the demo did not get far enough")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    spooled = {p.name[: -len(SUFFIX)]: read_spool_file(p)[0] for p in spool.glob(f"*{SUFFIX}")}
    assert len(spooled) >= 2  # the raw run and the runs the stages derive
    t0 = time.monotonic()
    cat = Catalog(directory=data)
    try:
        assert cat.writer.flush(300), cat.writer.status()
        took = time.monotonic() - t0
        missing = []
        for uid, docs in spooled.items():
            missing += _missing(cat, uid, docs)
            stop = cat.runs[uid].metadata["stop"]
            if docs[-1][0] == "stop":  # it had ended (its spool not yet dropped at the kill)
                assert stop["uid"] == docs[-1][1]["uid"]
            else:
                assert stop["exit_status"] == "fail" and "ended before its stop" in stop["reason"]
            for name, doc in docs:  # the frames the references name are in their files
                if name == "stream_datum":
                    res = next(
                        d
                        for n, d in docs
                        if n == "stream_resource" and d["uid"] == doc["stream_resource"]
                    )
                    path = res["uri"].removeprefix("file://localhost")
                    with h5py.File(path, "r", swmr=True) as f:
                        assert f[res["parameters"]["dataset"]].shape[0] >= doc["indices"]["stop"]
        events = sum(n == "event" for d in spooled.values() for n, _ in d)
        print(f"{len(spooled)} runs, {sum(map(len, spooled.values()))} documents ({events} "
              f"events) spooled before the kill; recovered in {took:.1f} s; {len(missing)} "
              "missing")  # fmt: skip
        assert missing == []
        assert not list(spool.glob(f"*{SUFFIX}"))
        raw_uid, raw = next((u, d) for u, d in spooled.items() if "stage" not in d[0][1])
        primary = next(d["uid"] for n, d in raw if n == "descriptor" and d["name"] == "primary")
        n = sum(n == "event" and d["descriptor"] == primary for n, d in raw)
        assert len(cat[raw_uid]["primary"]["fccd_image"].read()) == n >= 20
    finally:
        cat.close()


def _is_raw(path: Path) -> bool:
    docs, _ = read_spool_file(path)
    return bool(docs) and docs[0][0] == "start" and "stage" not in docs[0][1]


def _unshare() -> list[str] | None:
    """A private mount namespace this user may mount a tmpfs in, or None."""
    if shutil.which("unshare") is None:
        return None
    for cmd in (["unshare", "-m"], ["unshare", "-rm"]):
        probe = subprocess.run([*cmd, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                               capture_output=True)  # fmt: skip
        if probe.returncode == 0:
            return cmd
    return None


# The demo with DISK on a small filesystem (SIZE) filled but for what FILL leaves; once the
# demo says TOLD, space is freed (FREE=yes) or not; CHECK, where given, runs before the
# filesystem goes away with the namespace.
FULL_DISK = """
set -u
mount -t tmpfs -o size="$SIZE" tmpfs "$DISK"
head -c "$FILL" /dev/zero > "$DISK/filler"
"$CLI" demo --points 30 --darks 3 --quiet --output "$OUT" --spool-wait "$WAIT" > "$OUT/out.txt" 2>&1 &
pid=$!
for i in $(seq 900); do grep -q "$TOLD" "$OUT/out.txt" && break; sleep 0.2; done
sleep 3
[ "$FREE" = yes ] && rm "$DISK/filler"
wait $pid
echo "rc=$?" >> "$OUT/out.txt"
[ -z "${CHECK:-}" ] || "$PY" -c "$CHECK" >> "$OUT/out.txt" 2>&1
"""


@pytest.mark.slow
@pytest.mark.parametrize("space_returns", [True, False], ids=["space-returns", "disk-stays-full"])
def test_a_full_spool_disk_pauses_the_scan_and_loses_nothing(tmp_path, space_returns):
    """The spool on a small filesystem (128 MB), full but for 150 kB. The operator is told at
    once, the scan pauses; when space returns the run completes and is stored, read back; when it does not,
    the run fails and the demo exits non-zero without claiming anything was stored."""
    unshare = _unshare()
    if unshare is None:
        pytest.skip("no mount namespace to make a small filesystem in (unshare -m / -rm)")
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "spool").mkdir(parents=True)
    out.mkdir()
    env = {**_env(data, tmp_path / "logs"), "DISK": str(data / "spool"), "SIZE": "128m",
           "TOLD": "CANNOT SPOOL", "OUT": str(out), "CLI": CLI, "FILL": str(128 * 2**20 - 150_000),
           "WAIT": "120" if space_returns else "4",
           "FREE": "yes" if space_returns else "no"}  # fmt: skip
    subprocess.run([*unshare, "sh", "-c", FULL_DISK], env=env, timeout=600, check=True)
    text = (out / "out.txt").read_text()
    print(text[-3000:])
    assert text.count("CANNOT SPOOL") == 1  # told once, at once; not a warning per document
    if space_returns:
        assert "rc=0" in text and "takes documents again" in text
        assert "stored: run" in text and "(read back)" in text
        uid = text.split("stored: run ")[1].split()[0]
        cat = Catalog(directory=data)
        try:
            run = cat[uid]
            assert run.metadata["stop"]["exit_status"] == "success"
            # every point measured, stored; the one under way at the pause measured again
            # (a resume rewinds to the last checkpoint): 31 frames for 30 points
            assert set(run["primary"]["stage_point"].read().tolist()) == set(range(30))
            assert len(run["primary"]["fccd_image"].read()) >= 30
            derived = cat.derived(uid)
            assert {r.metadata["stop"]["exit_status"] for r in derived.values()} == {"success"}
        finally:
            cat.close()
    else:
        assert "rc=0" not in text and "\nstored: run" not in text
        assert "stayed unwritable" in text  # the run failed, saying why
        # what the disk refused went to the overflow folder, and the next session stores it
        assert "written to" in text and "instead" in text
        cat = Catalog(directory=data)
        try:
            assert cat.writer.flush(120)
            (raw,) = cat.raw_runs()
            stop = raw.metadata["stop"]
            assert stop["exit_status"] == "fail" and "stayed unwritable" in stop["reason"]
            assert len(raw["primary"]["seq_num"].read()) == stop["num_events"]["primary"]
        finally:
            cat.close()
        assert not any(d.exists() and any(d.iterdir()) for d in overflow_dirs(data / "spool"))


# run inside the namespace, while the small filesystem is still there
FRAMES_CHECK = """
from bluesky_ptycho.storage.catalog import Catalog
cat = Catalog()
cat.writer.flush(120)
(run,) = cat.raw_runs()
stop = run.metadata["stop"]
print("STOP:", stop["exit_status"], stop["num_events"], "|", stop.get("reason", ""))
for s in ("dark", "primary"):
    print("frames", s, run[s]["fccd_image"].read().shape[0])
print("points", len(set(run["primary"]["stage_point"].read().tolist())))
cat.close()
"""


@pytest.mark.slow
@pytest.mark.parametrize("space_returns", [True, False], ids=["space-returns", "disk-stays-full"])
def test_a_full_frames_disk_pauses_the_scan_and_keeps_every_frame(tmp_path, space_returns):
    """The detector's frame files on a small filesystem (300 MB, filled to leave room for
    about 27 raw frames of 4.3 MB). Once fewer than 20 fit, the scan pauses, saying why.
    When space returns the scan completes and is stored with every point; when it does not,
    the run fails after the wait with the reason in its stop document, the demo exits with
    2 without crashing, and every frame taken is read back. (Before: HDF5, refused space
    part-way through a frame, brought the process down with a segmentation fault.)"""
    unshare = _unshare()
    if unshare is None:
        pytest.skip("no mount namespace to make a small filesystem in (unshare -m / -rm)")
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "raw").mkdir(parents=True)
    out.mkdir()
    env = {**_env(data, tmp_path / "logs"), "DISK": str(data / "raw"), "SIZE": "300m",
           "TOLD": "frames' disk", "OUT": str(out), "CLI": CLI, "PY": sys.executable,
           "CHECK": FRAMES_CHECK,
           "FILL": str(180 * 2**20), "WAIT": "120" if space_returns else "4",
           "FREE": "yes" if space_returns else "no"}  # fmt: skip
    subprocess.run([*unshare, "sh", "-c", FULL_DISK], env=env, timeout=600, check=True)
    text = (out / "out.txt").read_text()
    print(text[-3000:])
    assert f"the frames' disk ({data / 'raw'}) has room for fewer than 20 frames" in text
    stop = text.split("STOP: ")[1].splitlines()[0]
    if space_returns:
        assert "rc=0" in text and "stored: run" in text and "(read back)" in text
        assert stop.startswith("success")
        # every point measured; the one under way at the pause measured again
        assert "points 30" in text
        # 30 events; the frame of the point under way at the pause is taken again (31)
        assert "'primary': 30" in stop and int(text.split("frames primary ")[1].split()[0]) >= 30
    else:
        assert "rc=2" in text and "\nstored: run" not in text
        said = text.split("bluesky-ptycho demo: ")[1].splitlines()[0]
        assert said.startswith(f"the frames' disk ({data / 'raw'}) stayed full for 4 s")
        assert stop.startswith("fail") and "stayed full" in stop and "MiB free" in stop
        taken = int(text.split("frames primary ")[1].split()[0])
        assert 0 < taken < 30 and f"'primary': {taken}" in stop and "frames dark 3" in text


def test_a_spool_file_made_to_run_code_is_refused_and_runs_nothing(tmp_path):
    """A spool file whose record carries msgpack-numpy's object-array form (a pickle): the
    next catalog refuses it, keeps it aside, and nothing is unpickled."""
    from bluesky_ptycho.io.codec import encode, record

    marker = tmp_path / "code-ran"

    class Marker:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True)
    uid = "0" * 8 + "-evil-run"
    start = [bytes(b) for b in record(encode("start", {"uid": uid, "time": 0.0}, uid))]
    evil_header = msgpack.packb({"v": 1, "name": "descriptor", "run": uid, "doc": {
        "uid": "d", "run_start": uid, "data_keys": {"x": {b"nd": True, b"kind": b"O",
                                                          b"data": pickle.dumps(Marker())}}}})  # fmt: skip
    evil = [bytes(b) for b in record([evil_header])]
    (spool / f"{uid}{SUFFIX}").write_bytes(b"".join(start + evil))
    docs, dropped = read_spool_file(spool / f"{uid}{SUFFIX}")
    assert [n for n, _ in docs] == ["start"] and dropped == len(b"".join(evil))
    cat = Catalog(directory=tmp_path / "data")
    try:
        cat.writer.flush(60)
        assert uid in cat.runs  # written up to the refused record, and closed
        assert cat.runs[uid].metadata["stop"]["exit_status"] == "fail"
    finally:
        cat.close()
    assert not marker.exists()


@pytest.mark.slow
def test_the_payload_through_the_run_engine_the_catalog_and_replay_runs_nothing(tmp_path, caplog):
    """The object-array payload in a scan's metadata: as bytes keys (what msgpack-numpy
    writes) the RunEngine itself refuses it, and so does the writer, in words, without
    raising; in the one form a catalog can hold (string keys, the pickle as text) it is stored
    and replayed as plain data. Nothing is unpickled anywhere."""
    import base64

    from bluesky import RunEngine

    from bluesky_ptycho.acquisition.plans import ptycho_scan
    from bluesky_ptycho.apps.replay import replay
    from bluesky_ptycho.devices import SampleStage, Shutter, SimFCCD

    marker = tmp_path / "code-ran"

    class Marker:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    blob = pickle.dumps(Marker())
    cat = Catalog(directory=tmp_path / "data")
    try:
        RE = RunEngine({})
        RE.subscribe(cat.writer)
        stage, shutter = SampleStage(name="stage"), Shutter(name="shutter")
        fccd = SimFCCD(name="fccd", stage=stage, shutter=shutter, write_path=cat.raw_dir)
        bytes_form = {b"nd": True, b"kind": b"O", b"data": blob}
        with pytest.raises(TypeError, match="keys must be str"):
            RE(ptycho_scan(fccd, stage, shutter, num_points=4, num_darks=1,
                           md={"extra": bytes_form}))  # fmt: skip
        cat.writer("start", {"uid": "x" * 36, "time": 0.0, "extra": bytes_form})
        assert "cannot be stored and is left out" in caplog.text
        text_form = {"nd": True, "kind": "O", "data": base64.b64encode(blob).decode()}
        (uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=9, num_darks=1,
                                md={"extra": text_form}))  # fmt: skip
        assert cat.writer.flush(120)
        assert cat[uid].metadata["start"]["extra"] == text_form
        result = replay(uid, cat, params={"reconstruction": {"final_iterations": 2}})
        assert result.stored
    finally:
        cat.close()
    assert not marker.exists()
