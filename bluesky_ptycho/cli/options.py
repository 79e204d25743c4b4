"""Options several commands share, each declared once."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bluesky_ptycho.storage.catalog import Catalog

DEVICES = ("cpu", "gpu")


def device(p: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device cpu|gpu``: the array backend."""
    p.add_argument(
        "--device",
        choices=DEVICES,
        default=default,
        help="array backend"
        + (f" (default {default})" if default else " (default: the pipeline file's)"),
    )


def quiet(p: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bar."""
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def pipeline(p: argparse.ArgumentParser) -> None:
    """``--pipeline FILE``."""
    p.add_argument(
        "--pipeline",
        type=Path,
        metavar="FILE",
        help="pipeline file (TOML; default: the package's default.toml)",
    )


def assignments(p: argparse.ArgumentParser, metavar: str, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable)."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar=metavar,
        help=f"change a setting, e.g. --set {example} (repeatable)",
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


def back_end(p: argparse.ArgumentParser) -> None:
    """``--control tcp://HOST:PORT --keys DIR``: which back-end, and its CURVE keys."""
    from bluesky_ptycho.transport import DEFAULT_CONTROL_PORT, DEFAULT_HOST, address

    control = address(DEFAULT_HOST, DEFAULT_CONTROL_PORT)
    p.add_argument("--control", default=control, help=f"the back-end (default {control})")
    keys(p)


def keys(p: argparse.ArgumentParser) -> None:
    """``--keys DIR``."""
    p.add_argument("--keys", type=Path, help="CURVE key folder (bluesky-ptycho keys)")
