"""Options several commands share, each declared once, and how every ``--help`` looks.

Every command that takes a pipeline file takes it as ``--pipeline FILE``,
changes to it as ``--set STAGE.KEY=VALUE``, the back-end as ``--control
tcp://HOST:PORT`` (and its keys as ``--keys DIR``), the catalog as ``--catalog
URI --api-key KEY``, the array backend as ``--device cpu|gpu`` and silence as
``--quiet``. Older spellings still work, with a note on stderr naming the new
one (:func:`deprecated`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bluesky_ptycho.pipeline.assignments import GRAMMAR

if TYPE_CHECKING:
    from bluesky_ptycho.storage.catalog import Catalog

DEVICES = ("cpu", "gpu")


def has_default(action: argparse.Action) -> bool:
    """Whether *action* has a default worth showing (not None, False, empty or suppressed)."""
    d = action.default
    if d is None or d is False or d is argparse.SUPPRESS:
        return False
    return not (isinstance(d, list | tuple | str) and not d)


class HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default (``(default: 400)``) unless the help already
    says what the default is; flags and options without a default are left as they are."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or not has_default(action):
            return text
        if action.option_strings or action.nargs in ("?", "*"):
            text += " (default: %(default)s)"
        return text


def plain(text: str) -> str:
    """A docstring as a terminal shows it: ``x`` and :mod:`x` become x."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def deprecated(command: str, old: str, new: str) -> None:
    """Say on stderr that *old* still works but *new* is the spelling to use."""
    print(
        f"bluesky-ptycho {command}: {old} is deprecated and will be removed; use {new}",
        file=sys.stderr,
    )


def device(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device cpu|gpu``: the array backend."""
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=default,
        help="array backend: cpu (NumPy) or gpu (CuPy, on a CUDA GPU)"
        + ("" if default else " (default: the pipeline file's pipeline.device)"),
    )


def quiet(p: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bar."""
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def pipeline(
    p: argparse.ArgumentParser,
    default: str = "the package's default.toml",
    positional: bool = False,
) -> None:
    """``--pipeline FILE``; with *positional*, the older ``COMMAND FILE`` spelling too (hidden,
    read by :func:`pipeline_file`)."""
    p.add_argument(
        "--pipeline",
        type=Path,
        metavar="FILE",
        help=f"pipeline file (TOML; `bluesky-ptycho check` validates one; default: {default})",
    )
    if positional:
        p.add_argument("pipeline_file", type=Path, nargs="?", help=argparse.SUPPRESS)


def pipeline_file(args: argparse.Namespace) -> Path | None:
    """The ``--pipeline`` file, or the one given the older way (positionally, with a note)."""
    old = getattr(args, "pipeline_file", None)
    if old is None:
        return args.pipeline
    if args.pipeline is not None:
        raise ValueError(
            f"two pipeline files, {old} and --pipeline {args.pipeline}: give one, as --pipeline FILE"
        )
    deprecated(args.command, f"the pipeline file as an argument ({args.command} {old})",
               f"{args.command} --pipeline {old}")  # fmt: skip
    return Path(old)


def assignments(
    p: argparse.ArgumentParser,
    metavar: str = GRAMMAR,
    example: str = "reconstruction.final_iterations=100",
    what: str = "a stage's parameter",
) -> None:
    """``--set STAGE.KEY=VALUE`` (repeatable), parsed by :mod:`bluesky_ptycho.pipeline.assignments`."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar=metavar,
        help=f"change {what}, e.g. --set {example}; the value is read as JSON when it parses "
        "(`bluesky-ptycho stages` lists each stage's parameters with unit and range; "
        "repeatable; default: none changed)",
    )


def catalog(p: argparse.ArgumentParser, optional: bool = False) -> None:
    """``--catalog URI --api-key KEY`` (and ``--no-catalog`` where storing is optional)."""
    p.add_argument(
        "--catalog",
        metavar="URI",
        default=os.environ.get("BLUESKY_PTYCHO_CATALOG"),
        help="a Tiled server (default $BLUESKY_PTYCHO_CATALOG, else the embedded on-disk "
        "catalog in $BLUESKY_PTYCHO_DATA or the user data directory)",
    )
    p.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("BLUESKY_PTYCHO_API_KEY"),
        help="the Tiled server's API key (default $BLUESKY_PTYCHO_API_KEY)",
    )
    if optional:
        p.add_argument("--no-catalog", action="store_true", help="store nothing in a catalog")


def open_catalog(args: argparse.Namespace) -> Catalog | None:
    """The catalog the options name (None with ``--no-catalog``)."""
    if getattr(args, "no_catalog", False):
        return None
    from bluesky_ptycho.storage.catalog import Catalog

    return Catalog(args.catalog, api_key=args.api_key)


def endpoint(text: str) -> str:
    """``tcp://HOST:PORT`` from ``tcp://HOST:PORT`` or ``HOST:PORT`` (argparse type)."""
    from bluesky_ptycho.transport import address

    host, _, port = text.removeprefix("tcp://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give tcp://HOST:PORT (a port in 1..65535), e.g. tcp://127.0.0.1:5578"
        )
    return address(host, int(port))


def split_endpoint(url: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` → (HOST, PORT)."""
    host, _, port = url.removeprefix("tcp://").rpartition(":")
    return host, int(port)


def back_end(p: argparse.ArgumentParser, **control: Any) -> None:
    """``--control tcp://HOST:PORT --keys DIR``: which back-end, and its CURVE keys.

    The keywords change ``--control``'s default and help (``serve`` listens there).
    """
    from bluesky_ptycho.transport import DEFAULT_CONTROL_PORT, DEFAULT_HOST, address

    p.add_argument(
        "--control",
        type=endpoint,
        metavar="URL",
        **{
            "default": address(DEFAULT_HOST, DEFAULT_CONTROL_PORT),
            "help": "the back-end's control address (commands and status), tcp://HOST:PORT",
            **control,
        },
    )
    keys(p)


def keys(p: argparse.ArgumentParser) -> None:
    """``--keys DIR``."""
    p.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help="CURVE key folder made by `bluesky-ptycho keys` (default: none, plain TCP, "
        "which the back-end allows on localhost only)",
    )
