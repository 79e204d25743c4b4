"""Validate a pipeline file without running anything (and without building any stage)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "check"
HELP = "validate a pipeline file without running anything"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pipeline_file", type=Path)


def run(args: argparse.Namespace) -> int:
    from bluesky_ptycho.pipeline.files import load_pipeline

    spec = load_pipeline(args.pipeline_file)
    chain = ", ".join(f"{k} ({s.stage}) ← {' + '.join(s.inputs)}" for k, s in spec.stages.items())
    print(f"{spec.source}: valid; device {spec.device}; {chain}")
    return 0
