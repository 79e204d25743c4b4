"""The ``bluesky-ptycho`` command: one module per sub-command, the shared options in :mod:`.options`.

Each command module has ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. An operator's mistake (a bad value, a missing file, a
back-end that does not answer) ends the command with one line on stderr
naming the thing, the value and the fix, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

#: the sub-commands, in the order ``--help`` lists them
COMMANDS = (
    "demo", "stages", "check", "replay", "runs", "logs", "raw2cxi", "reconstruct",
    "serve", "status", "control", "keys", "ioc",
)  # fmt: skip


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"bluesky_ptycho.cli.{name}")


def parser() -> argparse.ArgumentParser:
    """The whole command line (every sub-command and its options)."""
    p = argparse.ArgumentParser(prog="bluesky-ptycho", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        mod = _module(name)
        doc = (mod.__doc__ or "").strip()
        cmd = sub.add_parser(name, help=mod.HELP, description=doc or mod.HELP)
        mod.add_arguments(cmd)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from bluesky_ptycho.storage.logs import console

    console(logging.WARNING)  # (serve sets its own: -v, -vv)
    try:
        return int(_module(args.command).run(args))
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, OSError, LookupError, TypeError) as err:
        message = (
            str(err) if not isinstance(err, KeyError) else str(err.args[0] if err.args else err)
        )
        print(f"bluesky-ptycho {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
