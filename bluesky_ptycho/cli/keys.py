"""Make CURVE keys for a back-end that listens beyond localhost."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "keys"
HELP = "make CURVE keys for a back-end beyond localhost"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "folder",
        type=Path,
        metavar="DIR",
        help="folder to write the server's and a client's key pairs into (created if missing; "
        "refused if it holds keys already); serve --keys DIR on the back-end",
    )


def run(args: argparse.Namespace) -> int:
    from bluesky_ptycho.transport.security import generate_keys

    folder = generate_keys(args.folder)
    print(
        f"keys written to {folder}: give `serve --keys {folder}` on the back-end; a client "
        f"needs {folder}/client.key_secret and {folder}/server.key (Publisher(keys=FOLDER))"
    )
    return 0
