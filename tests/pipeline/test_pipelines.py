"""Pipeline files, the stage registry and its description, a third-party stage, run logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bluesky_ptycho.cli import main
from bluesky_ptycho.pipeline.files import DEFAULT, PipelineFileError, load_pipeline

BIN = Path(sys.executable).parent


def _file(tmp_path, text):
    path = tmp_path / "pipe.toml"
    path.write_text(text)
    return path


GOOD = """
[pipeline]
device = "cpu"
[stages.dark_statistics]
inputs = ["raw"]
[stages.frame_cleaning]
inputs = ["raw", "dark_statistics"]
[stages.reconstruction]
inputs = ["frame_cleaning"]
params = { final_iterations = 5 }
"""


def test_default_and_a_custom_file_are_valid(tmp_path):
    spec = load_pipeline()
    assert list(spec.stages) == [
        "dark_statistics",
        "frame_cleaning",
        "stxm",
        "reconstruction",
        "quality",
    ]
    spec = load_pipeline(_file(tmp_path, GOOD))
    assert spec.stages["reconstruction"].params == {"final_iterations": 5}
    assert main(["check", "--pipeline", str(DEFAULT)]) == 0
    assert main(["check", "--pipeline", str(DEFAULT.with_name("backend.toml"))]) == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("[stages.frame_cleaning]", '[stages.frame_cleaning]\nstage = "frame_cleanin"'),
            r"pipe\.toml: stages\.frame_cleaning: no stage named 'frame_cleanin' is installed; "
            r"did you mean 'frame_cleaning'\? use one "
            r"of dark_statistics, frame_cleaning, .*install the package",
        ),
        (
            ("final_iterations = 5", 'final_iterations = "many"'),
            r"pipe\.toml: stages\.reconstruction\.params\.final_iterations = 'many' is a string; "
            r"expected an integer in \[0, 100000\]",
        ),
        (
            ("final_iterations = 5", "final_iterations = -2"),
            r"stages\.reconstruction\.params\.final_iterations = -2 is below the minimum 0",
        ),
        (
            ("final_iterations = 5", 'algorithm = "pie"'),
            r"params\.algorithm = 'pie' is not one of \['rpie', 'epie', 'dm', 'raar', 'lsqml'\]",
        ),
        (
            ('inputs = ["raw", "dark_statistics"]', 'inputs = ["raw"]'),
            r"pipe\.toml: stages\.frame_cleaning needs dark_statistics/dark, which none of its inputs "
            r"\['raw'\] produce; add 'dark_statistics' to stages\.frame_cleaning\.inputs",
        ),
        (
            (
                'inputs = ["frame_cleaning"]',
                'inputs = ["frame_cleaning", "stxm"]\nparams = '
                '{ initial_probe = "estimate" }\n[stages.x]\nstage = "stxm"\ninputs = ["frame_cleaning"]',
            ),
            r"stages\.reconstruction\.inputs names 'stxm', which is not a stage of this file; use "
            r"'raw' or one of",
        ),
        (
            (
                '[stages.dark_statistics]\ninputs = ["raw"]',
                '[stages.dark_statistics]\ninputs = ["raw", "reconstruction"]',
            ),
            r"pipe\.toml: stages dark_statistics ← reconstruction ← frame_cleaning ← dark_statistics "
            r"read from each other in a cycle .*remove one of these inputs",
        ),
        (("[pipeline]", "[pipline]"), r"\[pipline\] is not a section of a pipeline file"),
        (('device = "cpu"', 'device = "tpu"'), r"pipeline\.device = 'tpu' is not one of"),
        (("final_iterations = 5 }", "final_iterations = 5"), r"pipe\.toml: not valid TOML"),
        (
            ('inputs = ["frame_cleaning"]', 'inputs = ["frame_cleaning"]\nwhere = "gpu-node-3"'),
            r"stages\.reconstruction\.where = 'gpu-node-3': a stage can run in \['process', 'dask'\]",
        ),
        (
            ('inputs = ["frame_cleaning"]', 'inputs = ["frame_cleaning"]\nwhere = "dask"'),
            r"stages\.reconstruction\.where = 'dask': stage 'reconstruction' cannot spread over "
            r"workers; use where = 'process' \(stages that can: \['frame_cleaning'\]\)",
        ),
        (
            ("params = { final_iterations = 5 }", "params = { options = { batch_sise = 3 } }"),
            r"stages\.reconstruction\.params: .*batch_sise",
        ),
    ],
    ids=[
        "unknown-stage",
        "wrong-type",
        "out-of-range",
        "bad-choice",
        "input-nobody-produces",
        "unknown-input",
        "cycle",
        "unknown-section",
        "bad-device",
        "toml-syntax",
        "where",
        "where-dask",
        "solver-option",
    ],
)
def test_each_malformed_file_is_reported_with_file_key_and_fix(tmp_path, change, message):
    old, new = change
    assert old in GOOD
    path = _file(tmp_path, GOOD.replace(old, new))
    with pytest.raises(PipelineFileError, match=message):
        load_pipeline(path)
    # the command line says the same, with exit status 2 and nothing run
    result = subprocess.run(
        [BIN / "bluesky-ptycho", "check", "--pipeline", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and str(path) in result.stderr


def test_stages_command_describes_every_installed_stage(capsys):
    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    for name in ("dark_statistics", "frame_cleaning", "stxm", "reconstruction"):
        assert f"\n{name}  (bluesky_ptycho " in f"\n{out}"
    assert "inputs:  raw/primary, dark_statistics/dark" in out
    assert "threshold_adu = 15.0    # a number in (0, 65535] ADU" in out
    assert "algorithm = 'rpie'    # one of 'rpie', 'epie', 'dm', 'raar', 'lsqml'" in out


@pytest.mark.slow
def test_a_third_party_stage_is_found_described_and_run(tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(Path(__file__).parents[1] / "plugin_example"),
        ],
        check=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [BIN / "bluesky-ptycho", "stages", "photon_counter"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "photon_counter  (ptycho-photon-counter 0.1.0" in out
    assert "inputs:  frame_cleaning/cleaned" in out and "threshold = 0.5" in out
    pipe = tmp_path / "with_counter.toml"
    pipe.write_text(
        DEFAULT.read_text() + '\n[stages.counter]\nstage = "photon_counter"\n'
        'inputs = ["frame_cleaning"]\nparams = { threshold = 1.0 }\n'
    )
    subprocess.run(
        [
            BIN / "bluesky-ptycho",
            "demo",
            "--points",
            "16",
            "--darks",
            "2",
            "--final-iterations",
            "2",
            "--quiet",
            "--pipeline",
            str(pipe),
            "--output",
            str(tmp_path / "out"),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    from bluesky_ptycho.storage.catalog import Catalog

    cat = Catalog()
    try:
        counts = cat.derived(cat[-1].metadata["start"]["uid"])["photon_counter"]["counts"]
        assert sorted(counts["point"].read()) == list(range(16))
        assert (counts["photons"].read() > 0).sum() >= 15
    finally:
        cat.close()


@pytest.mark.slow
def test_each_run_logs_to_its_own_file_and_logs_shows_it(tmp_path, capsys):
    from bluesky_ptycho.apps.demo import run_demo

    logs = Path(os.environ["BLUESKY_PTYCHO_LOGS"])
    r = run_demo(
        num_points=9,
        num_darks=2,
        final_iterations=2,
        output=tmp_path,
        progress=False,
        figure=False,
        log_dir=logs,
    )
    (path,) = logs.glob(f"*_scan1_{r.uid}.log")
    text = path.read_text()
    assert f"run {r.uid} (scan 1, plan ptycho_scan) started" in text
    assert "bluesky_ptycho.stages.reconstruction: rpie: 9 frames" in text
    assert text.rstrip().endswith("the pipeline has finished this run")
    # it tells what the run made: frames, flags, iterations, final error, the CXI file, the
    # derived runs (on one line); and not that nothing went wrong, stage by stage
    done = next(x for x in text.splitlines() if f"run {r.uid} (scan 1) done in" in x)
    assert f"{9} frame(s), {len(r.flags)} flagged, {r.iterations} iteration(s)" in done
    assert f"data error {r.data_error:.4g}" in done and f"CXI {r.cxi_path}" in done
    if r.frc_resolution_nm == r.frc_resolution_nm:  # (an FRC needs enough frames)
        assert f"resolution {r.frc_resolution_nm:.3g} nm" in done
    assert f"CXI written: {r.cxi_path}" in text
    assert (
        f"frame_cleaning: 9 frame(s): {9 - sum('samples lost' in f for f in r.flags.values())}"
        in text
    )
    assert f"reconstruction: rpie, {r.iterations} iteration(s)" in text
    (derived,) = [x for x in text.splitlines() if "derived runs: " in x]
    assert all(f"{k} " in derived for k in ("dark_statistics", "frame_cleaning", "reconstruction"))
    assert "error(s)" not in text and "(raw) in" not in text
    assert len(text.splitlines()) <= 16, text
    assert main(["logs", r.uid[:8]]) == 0
    assert capsys.readouterr().out == text
    import io

    from bluesky_ptycho.storage.logs import follow

    out = io.StringIO()
    follow(logs, path, out, poll=0.05, stop_after=0.3)
    assert out.getvalue().startswith(f"==> {path} <==\n") and text in out.getvalue()
    assert main(["logs", "999"]) == 2
