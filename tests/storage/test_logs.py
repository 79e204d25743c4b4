"""The console's verbosity (``serve``, ``serve -v``, ``serve -vv``) and the replay's log file
name."""

from __future__ import annotations

import logging

import pytest

from bluesky_ptycho.cli import parser
from bluesky_ptycho.storage.logs import (
    ROOT,
    SUMMARY,
    close_run_log,
    console,
    find_log,
    run_log_handler,
)


@pytest.fixture
def root_logger():
    """The package's logger, put back as it was after the test."""
    logger = logging.getLogger(ROOT)
    handlers, level = list(logger.handlers), logger.level
    yield logger
    for h in logger.handlers:
        if h not in handlers:
            logger.removeHandler(h)
    logger.setLevel(level)


def test_a_quiet_console_shows_warnings_and_the_lines_marked_summary_only(root_logger, capsys):
    log = logging.getLogger(f"{ROOT}.stages.test")
    console(logging.WARNING, summaries=True)  # serve
    log.info("frame of point 3 flagged")
    log.info("run abc done in 3.0 s", extra=SUMMARY)
    log.warning("beam bad")
    log.debug("batch of 8 sent")
    err = capsys.readouterr().err
    assert "run abc done" in err and "beam bad" in err
    assert "flagged" not in err and "batch" not in err
    console(logging.INFO, summaries=True)  # serve -v
    log.info("frame of point 3 flagged")
    log.debug("batch of 8 sent")
    err = capsys.readouterr().err
    assert "flagged" in err and "batch" not in err
    console(logging.DEBUG, summaries=True)  # serve -vv
    log.debug("batch of 8 sent")
    assert "batch of 8 sent" in capsys.readouterr().err
    console(logging.WARNING)  # the other commands: warnings only
    log.info("run abc done in 3.0 s", extra=SUMMARY)
    assert capsys.readouterr().err == ""
    assert len([h for h in root_logger.handlers if getattr(h, "_ptycho_console", False)]) == 1


def test_serve_counts_its_v_options():
    assert parser().parse_args(["serve"]).verbose == 0
    assert parser().parse_args(["serve", "-v"]).verbose == 1
    assert parser().parse_args(["serve", "-vv"]).verbose == 2


def test_a_replay_has_a_log_file_of_its_own_next_to_the_live_runs(tmp_path, root_logger):
    start = {"uid": "0123abcd-0000-4000-8000-000000000000", "scan_id": 7, "time": 1.7e9,
             "plan_name": "ptycho_scan"}  # fmt: skip
    live = run_log_handler(tmp_path, start)
    close_run_log(live)
    replay = run_log_handler(tmp_path, start, replay=True)
    close_run_log(replay)
    live_file, replay_file = sorted(tmp_path.glob("*.log"))
    assert live_file.name.endswith(f"_scan7_{start['uid']}.log")
    assert replay_file.name.endswith(f"_scan7_{start['uid']}-replay.log")
    assert "replay of run 0123abcd" in replay_file.read_text()
    assert "replay of run" not in live_file.read_text()
    # `bluesky-ptycho logs 7` and `logs 0123abcd` find the latest: the replay's
    assert find_log(tmp_path, "7") == find_log(tmp_path, "0123abcd") == replay_file
    # a short number that is no scan's is refused, not read as the start of some uid
    with pytest.raises(FileNotFoundError, match=r"no run log of scan 0123.*give --uid"):
        find_log(tmp_path, "0123")
    assert find_log(tmp_path, "0123", uid=True) == replay_file
    assert find_log(tmp_path, "0123ab") == replay_file
