"""The demo's and the replay's progress: the phases named, in order, with the reconstruction's
iteration and data error."""

from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import termios
import time

import pytest
from event_model import compose_run

from bluesky_ptycho.apps.progress import Progress


def _phases(text: str) -> list[str]:
    """The phase of each line, in order, repeats folded."""
    names: list[str] = []
    for line in text.splitlines():
        name = line.split(":", 1)[0].split(" (", 1)[0]
        if not names or names[-1] != name:
            names.append(name)
    return names


def _raw_scan(points: int, darks: int):
    """The documents of a raw scan: start, darks, points, stop."""
    run = compose_run(metadata={"ptycho": {"num_points": points, "num_darks": darks}})
    docs = [("start", run.start_doc)]
    for stream, n in (("dark", darks), ("primary", points)):
        d = run.compose_descriptor(name=stream, data_keys={"x": {"source": "s", "dtype": "number",
                                                                  "shape": []}})  # fmt: skip
        docs.append(("descriptor", d.descriptor_doc))
        docs += [("event", d.compose_event(data={"x": 1.0}, timestamps={"x": 0.0}))
                 for _ in range(n)]  # fmt: skip
    docs.append(("stop", run.compose_stop()))
    return docs


def _stage_run(source: dict, stream: str, rows: list[dict]):
    run = compose_run(metadata={"source_run": source["uid"], "stage": "s"})
    keys = {k: {"source": "s", "dtype": "number", "shape": []} for k in rows[0]}
    d = run.compose_descriptor(name=stream, data_keys=keys)
    return (
        [("start", run.start_doc), ("descriptor", d.descriptor_doc)]
        + [("event", d.compose_event(data=r, timestamps=dict.fromkeys(r, 0.0))) for r in rows]
        + [("stop", run.compose_stop())]
    )


def test_off_a_terminal_each_phase_is_a_line_and_the_final_one_shows_the_iterations():
    out = io.StringIO()
    bar = Progress(5, file=out, interval=3600)
    bar.phase("starting", "building the pipeline")
    raw = _raw_scan(5, 2)
    for name, doc in raw[:-1]:
        bar.raw(name, doc)
    iterations = _stage_run(
        raw[0][1], "iteration",
        [{"iteration": i, "data_error": 0.5 / i, "n_measured": 5} for i in range(1, 8)],
    )  # fmt: skip
    bar.raw(*raw[-1])  # the scan's stop: its frames are all in
    for name, doc in iterations:
        bar.derived(name, doc)
    bar.phase("saving", "the figure")
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert _phases(text) == ["starting", "scan", "final iterations", "saving"], text
    final = next(x for x in text.splitlines() if "iteration 7" in x)
    assert "5/5 points" in final and "data error 0.0714" in final and "5 frames used" in final
    assert "scan (2 darks first): 0/5 points" in text


def test_a_replay_counts_the_frames_as_they_come_out_cleaned():
    out = io.StringIO()
    bar = Progress(4, "replay", count="cleaned", file=out, interval=3600)
    raw = _raw_scan(4, 1)
    cleaned = _stage_run(raw[0][1], "cleaned", [{"point": p} for p in range(4)])
    for name, doc in cleaned[:-1]:
        bar.derived(name, doc)
    assert bar.done == 4 and bar.phase_name == "replay"
    bar.derived(*cleaned[-1])
    assert bar.phase_name == "final iterations"
    bar.close()
    assert _phases(out.getvalue()) == ["replay", "final iterations"]


def test_on_a_terminal_it_is_a_bar_labelled_with_the_phase():
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 x 120
    with open(slave, "w", closefd=True) as tty:
        bar = Progress(3, file=tty)
        bar.phase("starting", "opening the catalog")
        raw = _raw_scan(3, 0)
        for name, doc in raw:
            bar.raw(name, doc)
        rows = [{"iteration": 41, "data_error": 0.0125, "n_measured": 3}]
        time.sleep(0.3)
        for name, doc in _stage_run(raw[0][1], "iteration", rows):
            bar.derived(name, doc)  # the final iterations: the count stands, the bar is redrawn
        tty.flush()
        before_close = _read(master)
        bar.close()
    text = before_close + _read(master)
    os.close(master)
    assert "starting: opening the catalog\n" in text.replace("\r\n", "\n")
    assert "scan:" in text and "3/3" in text and "final iterations:" in text
    assert "iteration=41" in before_close and "error=0.0125" in before_close


def _read(fd: int) -> str:
    """What the terminal's other end has written so far."""
    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # (the other end is closed: all is read)
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


@pytest.mark.slow
def test_the_demo_names_its_phases_in_order(tmp_path, capsys):
    from bluesky_ptycho.cli import main

    code = main(["demo", "--points", "9", "--darks", "2", "--final-iterations", "3",
                 "--output", str(tmp_path)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert _phases(err) == ["starting", "scan", "final iterations", "saving"], err
    assert "starting: opening the catalog" in err and "starting: building the pipeline" in err
    final = [x for x in err.splitlines() if x.startswith("final iterations")]
    assert any("iteration " in x and "data error " in x for x in final), err
    assert "log:    bluesky-ptycho logs " in out
