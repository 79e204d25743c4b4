"""The IPython profile, started non-interactively as an operator would start it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROFILE = Path(__file__).parents[2] / "profiles" / "profile_ptycho"


@pytest.mark.slow
def test_ipython_profile_gives_a_session_where_a_scan_runs_and_is_stored(tmp_path):
    profile = tmp_path / "profile_ptycho"
    shutil.copytree(PROFILE, profile)  # IPython writes its history into the profile
    code = (
        "(uid,) = RE(ptycho_scan(fccd, stage, shutter, num_points=9, num_darks=2)); "
        "run = pipeline.wait(uid, 300); "
        "assert catalog.writer.flush(120); "
        "print('FRAMES', len(catalog[uid]['primary']['fccd_image'].read())); "
        "print('DERIVED', sorted(catalog.derived(uid))); "
        "print('DB', db[uid].start['scan_id'], RE.md['scan_id']); "
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
    assert "DB 1 1" in out.stdout and "SUSPENDERS 3" in out.stdout  # beam, quality, spool
    assert "Error" not in out.stderr, out.stderr
