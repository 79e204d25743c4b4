"""Validate a pipeline file without running anything (and without building any stage): every
problem at once, each with the file, the key and the fix. With --set, the file as those
changes would leave it."""

from __future__ import annotations

import argparse

from bluesky_ptycho.cli import options

NAME = "check"
HELP = "validate a pipeline file without running anything"


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.pipeline(p, positional=True)
    options.assignments(p)


def run(args: argparse.Namespace) -> int:
    from bluesky_ptycho.pipeline.assignments import check_assignments, stage_assignments
    from bluesky_ptycho.pipeline.files import load_pipeline

    params = stage_assignments(args.set)
    spec = load_pipeline(options.pipeline_file(args))
    if params:
        check_assignments(params, spec)
        spec = spec.changed(params=params)
    chain = ", ".join(f"{k} ({s.stage}) ← {' + '.join(s.inputs)}" for k, s in spec.stages.items())
    print(f"{spec.source}: valid; device {spec.device}; {chain}")
    return 0
