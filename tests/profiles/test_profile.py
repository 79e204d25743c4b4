"""The IPython profile, started non-interactively as an operator would start it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PROFILE = ROOT / "profiles" / "profile_ptycho"


@pytest.mark.slow
def test_ipython_profile_gives_a_session_where_a_scan_runs_and_is_stored(tmp_path):
    profile = tmp_path / "profile_ptycho"
    shutil.copytree(PROFILE, profile)  # IPython writes its history into the profile
    data = Path(os.environ["BLUESKY_PTYCHO_DATA"])
    data.mkdir(parents=True, exist_ok=True)
    (data / "scan_id").write_text("41\n")  # the data directory's counter: the demo took 41
    code = (
        "(uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=9, num_darks=2)); "
        "run = pipeline.wait(uid, 300); "
        "assert catalog.writer.flush(120); "
        "print('FRAMES', len(catalog[uid]['primary']['fccd_image'].read())); "
        "print('DERIVED', sorted(catalog.derived(uid))); "
        "print('DB', db[uid].start['scan_id'], RE.md['scan_id']); "
        # db[-1] is the scan (derived runs are stored after it), with its readings' table
        "print('LAST', db[-1].start['uid'] == uid, sorted(db[-1].v2), len(db[-1].table())); "
        "print('LASTDERIVED', sorted(db[-1].derived)); "
        "print('SCANIDS', {h.start.get('scan_id') for h in db[-1].derived.values()}, "
        "{h.start['source_scan_id'] for h in db[-1].derived.values()}); "
        # what the pipeline's wait gives: its stages by key, and the uids of their runs
        "print('WAIT', list(run) == list(run.stages), "
        "sorted(run.derived.values()) == sorted(h.start['uid'] for h in db[-1].derived.values())); "
        "print('SUSPENDERS', len(RE.suspenders)); "
        "catalog.close()"
    )
    out = subprocess.run(
        [
            Path(sys.executable).with_name("ipython"),
            f"--profile-dir={profile}",
            "--no-banner",
            "--colors=nocolor",
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bluesky_ptycho: catalog at" in out.stdout
    assert "FRAMES 9" in out.stdout
    assert (
        "DERIVED ['dark_statistics', 'frame_cleaning', 'quality', 'reconstruction', 'stxm']"
        in out.stdout
    )
    assert "DB 42 42" in out.stdout and "SUSPENDERS 4" in out.stdout  # beam, quality, spool, frames
    assert "LAST True ['dark', 'primary'] 9" in out.stdout
    assert (
        "LASTDERIVED ['dark_statistics', 'frame_cleaning', 'quality', 'reconstruction', 'stxm']"
        in out.stdout
    )
    assert "SCANIDS {None} {42}" in out.stdout and "WAIT True True" in out.stdout
    assert (data / "scan_id").read_text() == "42\n"
    assert "Error" not in out.stderr, out.stderr


def test_the_profile_stops_saying_which_process_has_the_catalog(tmp_path):
    """A session on a data directory whose embedded catalog another process (a `serve`, the
    demo) has open does not start half-made: one message, naming that process."""
    profile = tmp_path / "profile_ptycho"
    shutil.copytree(PROFILE, profile)
    data = os.environ["BLUESKY_PTYCHO_DATA"]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bluesky_ptycho.storage.lock import "
         f"CatalogLock; CatalogLock({data!r}).acquire(); print('HELD', flush=True); "
         "time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout is not None and "HELD" in holder.stdout.readline()
        out = subprocess.run(
            [Path(sys.executable).with_name("ipython"), f"--profile-dir={profile}",
             "--no-banner", "--colors=nocolor", "-c", "print('STARTED')"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait(30)
    assert out.returncode != 0 and "STARTED" not in out.stdout
    assert f"bluesky_ptycho: the embedded catalog in {data}/catalog is in use: process " \
           f"{holder.pid} (python -c" in out.stderr  # fmt: skip
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
