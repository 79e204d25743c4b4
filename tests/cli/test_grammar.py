"""One grammar across every sub-command of ``bluesky-ptycho``, checked on the real parser.

Every option and argument is explained, every default is shown, the options
several commands share are spelled alike, misspellings are answered with the
closest name, and the older spellings still work (with a note) or are refused
with the new one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import bluesky_ptycho
from bluesky_ptycho.cli import COMMANDS, main, parser
from bluesky_ptycho.cli.options import has_default
from bluesky_ptycho.pipeline.files import DEFAULT

#: where each shared option must appear (it may appear elsewhere too, spelled alike)
SHARED = {
    "--pipeline": {"demo", "check", "replay", "serve"},
    "--set": {"demo", "check", "replay", "serve", "raw2cxi", "control"},
    "--control": {"serve", "status", "control"},
    "--keys": {"serve", "status", "control"},
    "--device": {"demo", "replay", "raw2cxi", "reconstruct", "serve"},
    "--quiet": {"demo", "replay", "raw2cxi", "reconstruct"},
    "--catalog": {"demo", "replay", "runs", "serve"},
    "--api-key": {"demo", "replay", "runs", "serve"},
}


def _commands() -> dict[str, argparse.ArgumentParser]:
    p = parser()
    assert list(p.commands) == list(COMMANDS)
    return {"": p, **p.commands}


def _shown(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in p._actions
        if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)
    ]


def _flat(text: str) -> str:
    return " ".join(text.split())


def _help_of(p: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help line of *action* as ``--help`` prints it, defaults expanded."""
    return _flat(p._get_formatter()._expand_help(action))


def test_every_option_and_argument_is_explained():
    missing = [
        f"{name or 'bluesky-ptycho'} {a.option_strings or a.dest}"
        for name, p in _commands().items()
        for a in _shown(p)
        if not (a.help or "").strip()
    ]
    assert missing == []


def test_every_help_shows_each_default_and_says_what_happens_without_one():
    problems = []
    for name, p in _commands().items():
        full = _flat(p.format_help())
        for a in _shown(p):
            if isinstance(a, argparse._HelpAction | argparse._VersionAction) or a.nargs == 0:
                continue  # flags: present or not
            if a.required or (not a.option_strings and a.nargs not in ("?", "*")):
                continue  # has to be given
            text = _help_of(p, a)
            where = f"{name} {a.option_strings or a.dest}"
            if text not in full:
                problems.append(f"{where}: help not shown ({text!r})")
            if "default" not in text:
                problems.append(f"{where}: no default in {text!r}")
            elif has_default(a) and str(a.default) not in text:
                problems.append(f"{where}: default {a.default!r} not in {text!r}")
    assert problems == []


def test_the_options_the_issue_found_silent_now_say_unit_and_default():
    helps = {
        (name, s): _help_of(p, a)
        for name, p in _commands().items()
        for a in _shown(p)
        for s in (a.option_strings or [a.dest])
    }
    assert "relative to the current directory" in helps["demo", "--output"]
    assert "default: out/demo" in helps["demo", "--output"]
    assert "metres" in helps["demo", "--step"] and "1e-07 m" in helps["demo", "--step"]
    assert (
        "fermat" in helps["demo", "--pattern"] and "default: fermat" in helps["demo", "--pattern"]
    )
    assert "default: 16" in helps["raw2cxi", "--batch-size"]
    assert "MiB" in helps["serve", "--max-message-mb"]
    for cmd in ("demo", "replay", "raw2cxi", "reconstruct", "serve"):
        assert "NumPy" in helps[cmd, "--device"] and "CuPy" in helps[cmd, "--device"]
    assert "created if missing" in helps["keys", "folder"]
    assert "default: tcp://127.0.0.1:5577" in helps["serve", "--listen"]
    assert "port 5578" in helps["serve", "--control"]


def test_shared_options_are_spelled_alike_everywhere():
    seen: dict[str, dict[tuple, list[str]]] = {}
    for name, p in _commands().items():
        for a in _shown(p):
            for s in a.option_strings:
                if s in SHARED:
                    shape = (tuple(a.option_strings), a.metavar, a.choices, a.nargs, type(a))
                    seen.setdefault(s, {}).setdefault(shape, []).append(name)
    for option, commands in SHARED.items():
        shapes = seen.get(option, {})
        assert len(shapes) == 1, f"{option} differs between commands: {shapes}"
        assert commands <= set(next(iter(shapes.values()))), (option, shapes)
    assert seen["--set"].popitem()[0][1] == "STAGE.KEY=VALUE"
    assert seen["--pipeline"].popitem()[0][1] == "FILE"
    assert seen["--control"].popitem()[0][1] == "URL"


def test_no_command_shows_the_older_spellings():
    for name, p in _commands().items():
        flags = {s for a in _shown(p) for s in a.option_strings}
        assert not flags & {"--port", "--control-port", "--snapshot-port", "--host"}, name
        assert not any(a.dest == "pipeline_file" for a in _shown(p)), name


def test_help_texts_carry_no_rest_markup():
    for name, p in _commands().items():
        text = p.format_help()
        for mark in ("``", ":mod:", ":class:", ":func:", ":meth:"):
            assert mark not in text, f"{name or 'bluesky-ptycho'} --help shows {mark}"
    assert "Live ptychography" in parser().format_help()


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"bluesky-ptycho {bluesky_ptycho.__version__}"
    out = subprocess.run(
        [Path(sys.executable).with_name("bluesky-ptycho"), "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith(bluesky_ptycho.__version__)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["demoo"], "invalid choice: 'demoo'; did you mean 'demo'?"),
        (["demo", "--pionts", "3"], "unrecognized arguments: --pionts 3; did you mean --points?"),
        (["demo", "--pattern", "fermt"], "invalid choice: 'fermt'; did you mean 'fermat'?"),
        (["control", "abrot"], "invalid choice: 'abrot'; did you mean 'abort'?"),
        (
            ["reconstruct", "x.cxi", "-o", "y.cxi", "--algoritm", "raar"],
            "did you mean --algorithm?",
        ),
        (["status", "--control", "localhost"], "give tcp://HOST:PORT"),
        (["--versoin"], "unrecognized arguments: --versoin; did you mean --version?"),
    ],
)
def test_misspelled_commands_options_and_choices_get_the_closest(capsys, argv, words):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert words in err
    command = argv[0] if argv[0] not in ("demoo", "--versoin") else ""
    assert f"usage: bluesky-ptycho {command}".rstrip() in err


def test_set_names_the_closest_stage_and_parameter(capsys):
    rc = main([
        "check", "--pipeline", str(DEFAULT),
        "--set", "reconstruction.final_iteration=3",
        "--set", "reconstruct.algorithm=raar",
        "--set", "reconstruction.algorithm=pie",
        "--set", "frame_cleaning.threshold_adu=-1",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert (
        "--set reconstruction.final_iteration=3: unknown parameter 'final_iteration' of stage "
        "'reconstruction'; did you mean 'final_iterations'?" in err
    )
    assert "has no stage 'reconstruct'; did you mean 'reconstruction'?" in err
    assert "algorithm is not one of" in err and "did you mean 'rpie'?" in err
    assert "frame_cleaning.threshold_adu=-1: threshold_adu is at or below the minimum 0" in err
    assert "its parameters are" not in err  # the closest name, not the whole list
    assert main(["check", "--set", "reconstruction.final_iterations=7"]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["check", "--set", "final_iterations=7"]) == 2
    assert "write STAGE.KEY=VALUE" in capsys.readouterr().err


def test_a_misspelled_name_in_a_pipeline_file_gets_the_closest(tmp_path, capsys):
    path = tmp_path / "pipe.toml"
    text = DEFAULT.read_text()
    assert "final_iterations =" in text
    path.write_text(text.replace("final_iterations =", "final_iteration ="))
    assert main(["check", "--pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert (
        "stages.reconstruction.params.final_iteration = " in err
        and "is not a parameter of 'reconstruction'; did you mean 'final_iterations'?" in err
    )
    assert "its parameters are" not in err
    path.write_text(text.replace("[pipeline]", "[pipelin]"))
    assert main(["check", "--pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert "[pipelin] is not a section of a pipeline file; did you mean [pipeline]?" in err
    # nothing close: the list, as before
    path.write_text(text.replace("final_iterations =", "zzz ="))
    assert main(["check", "--pipeline", str(path)]) == 2
    assert "its parameters are" not in (err := capsys.readouterr().err)
    assert "the parameters are [" in err and "'final_iterations'" in err


def test_check_and_serve_still_take_the_pipeline_file_positionally_with_a_note(capsys):
    assert main(["check", str(DEFAULT)]) == 0
    out = capsys.readouterr()
    assert f"{DEFAULT}: valid" in out.out
    assert f"use check --pipeline {DEFAULT}" in out.err and "deprecated" in out.err
    assert main(["check", str(DEFAULT), "--pipeline", str(DEFAULT)]) == 2
    assert "give one, as --pipeline FILE" in capsys.readouterr().err
    args = parser().parse_args(["serve", str(DEFAULT)])
    from bluesky_ptycho.cli.options import pipeline_file

    assert pipeline_file(args) == DEFAULT
    assert f"use serve --pipeline {DEFAULT}" in capsys.readouterr().err


def test_serve_takes_addresses_as_urls_and_the_older_ports_with_a_note(capsys):
    from bluesky_ptycho.cli.serve import addresses

    def resolve(*argv):
        return addresses(parser().parse_args(["serve", *argv]))

    assert resolve() == ("127.0.0.1", 5577, 5578, 5579)
    assert capsys.readouterr().err == ""
    assert resolve("--listen", "tcp://localhost:6000", "--control", "localhost:6001") == (
        "localhost", 6000, 6001, 5579,
    )  # fmt: skip
    assert resolve("--listen", "tcp://0.0.0.0:6000") == ("0.0.0.0", 6000, 5578, 5579)
    assert resolve(
        "--host", "127.0.0.1", "--port", "6000", "--control-port", "6001", "--snapshot-port", "6002"
    ) == ("127.0.0.1", 6000, 6001, 6002)
    err = capsys.readouterr().err
    assert "--host 127.0.0.1 --port 6000 is deprecated" in err
    assert "use --listen tcp://127.0.0.1:6000" in err
    assert "use --control tcp://127.0.0.1:6001" in err
    assert "use --results tcp://127.0.0.1:6002" in err
    with pytest.raises(
        ValueError, match=r"listens on one interface.*--control tcp://0\.0\.0\.0:6001"
    ):
        resolve("--listen", "tcp://0.0.0.0:6000", "--control", "tcp://127.0.0.1:6001")
    with pytest.raises(ValueError, match="give --control only"):
        resolve("--control", "tcp://127.0.0.1:6001", "--control-port", "6001")
    for flag, value in (("--port", "99999"), ("--port", "0"), ("--control-port", "-1"),
                        ("--snapshot-port", "70000")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"{flag} {value}: give a port in 1\.\.65535"):
            resolve(flag, value)


def test_serve_beyond_localhost_without_keys_is_refused_naming_listen(capsys):
    assert main(["serve", "--listen", "tcp://0.0.0.0:6000", "--no-catalog"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bluesky-ptycho serve: --listen tcp://0.0.0.0:6000: ")
    assert "needs CURVE keys" in err and "--keys DIR" in err


def test_raw2cxi_set_takes_stages_and_the_older_bare_keys_with_a_note(tmp_path, capsys):
    base = ["raw2cxi", str(tmp_path / "f.h5"), "--metadata", str(tmp_path / "none.json"),
            "-o", str(tmp_path / "o.cxi"), "--quiet"]  # fmt: skip
    assert main([*base, "--set", "threshold_adu=12"]) == 2
    err = capsys.readouterr().err
    assert "--set threshold_adu=12 is deprecated" in err
    assert "use --set frame_cleaning.threshold_adu=12" in err
    assert "cannot read the scan metadata" in err  # past the settings: they were fine
    assert main([*base, "--set", "frame_cleaning.treshold_adu=12"]) == 2
    assert "did you mean 'threshold_adu'?" in capsys.readouterr().err
    assert main([*base, "--set", "reconstruction.algorithm=raar"]) == 2
    assert "has no stage 'reconstruction'" in capsys.readouterr().err


def test_reconstruct_takes_solver_options_as_option_and_set_with_a_note(tmp_path, capsys):
    base = ["reconstruct", str(tmp_path / "none.cxi"), "-o", str(tmp_path / "o.cxi"), "--quiet"]
    assert main([*base, "--option", "alpha=0.5"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "deprecated" not in err
    assert main([*base, "--set", "alpha=0.5"]) == 2
    err = capsys.readouterr().err
    assert "--set alpha=0.5 is deprecated" in err and "use --option alpha=0.5" in err
    assert main([*base, "--option", "alpha"]) == 2
    assert "--option 'alpha': write KEY=VALUE" in capsys.readouterr().err


def test_the_pipeline_option_names_the_same_file_in_every_command():
    for cmd in ("demo", "check", "replay", "serve"):
        args = parser().parse_args([cmd, *(["RUN"] if cmd == "replay" else []),
                                    "--pipeline", str(DEFAULT)])  # fmt: skip
        assert args.pipeline == DEFAULT, cmd


@pytest.mark.slow
def test_demo_runs_the_pipeline_with_the_set_changes(tmp_path, capsys):
    from bluesky_ptycho.storage.catalog import Catalog

    argv = ["demo", "--points", "9", "--darks", "2", "--quiet", "--output", str(tmp_path),
            "--set", "reconstruction.algorithm=raar", "--set", "reconstruction.final_iterations=2",
            "--set", "frame_cleaning.threshold_adu=12"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    uid = out.split("stored: run ")[1].split()[0]
    cat = Catalog()
    try:
        # each derived run's start document names the pipeline that made it
        stages = cat.derived(uid)["reconstruction"].metadata["start"]["pipeline"]["stages"]
    finally:
        cat.close()
    assert stages["reconstruction"]["params"]["algorithm"] == "raar"
    assert stages["reconstruction"]["params"]["final_iterations"] == 2
    assert stages["frame_cleaning"]["params"]["threshold_adu"] == 12
