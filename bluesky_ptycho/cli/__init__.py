"""The ``bluesky-ptycho`` command: one module per sub-command, the shared options in :mod:`.options`.

Every option is explained with its unit and default in ``--help``
(:class:`.options.HelpFormatter`); a misspelled command, choice or option is
answered with the closest one (``did you mean …``).

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
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: the sub-commands, in the order ``--help`` lists them
COMMANDS = (
    "demo", "stages", "check", "replay", "runs", "logs", "raw2cxi", "reconstruct",
    "serve", "status", "control", "keys", "ioc",
)  # fmt: skip

DESCRIPTION = (
    "Live ptychography with Bluesky: a simulated scan reconstructed as it runs (demo); "
    "pipeline files (stages, check); stored runs (runs, logs, replay); files offline "
    "(raw2cxi, reconstruct); a back-end on another machine (serve, status, control, keys); "
    "a soft IOC (ioc)."
)
EPILOG = "bluesky-ptycho COMMAND --help lists a command's options, each with its default."


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"bluesky_ptycho.cli.{name}")


class Parser(argparse.ArgumentParser):
    """argparse, answering a misspelled command, choice or option with the closest one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from bluesky_ptycho.cli.options import HelpFormatter

        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        #: the sub-commands' parsers by name (filled by :func:`parser`)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        choices = action.choices
        if choices is None or value in choices:
            return
        from bluesky_ptycho.core.params import close_to

        names = [str(c) for c in choices]
        near = close_to(str(value), names)
        hint = f"; did you mean {near!r}?" if near else ""
        raise argparse.ArgumentError(
            action, f"invalid choice: {value!r}{hint} (choose from {', '.join(names)})"
        )

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            sub = self.commands.get(getattr(parsed, "command", None) or "", self)
            sub.error(unrecognized(sub, extras))
        return parsed


def unrecognized(p: argparse.ArgumentParser, extras: list[str]) -> str:
    """``unrecognized arguments: --pionts 3; did you mean --points?``"""
    from bluesky_ptycho.core.params import close_to

    known = [s for a in p._actions for s in a.option_strings if s.startswith("--")]
    hints = [
        (flag, near)
        for flag in (e.partition("=")[0] for e in extras if e.startswith("--"))
        if (near := close_to(flag, known)) is not None
    ]
    text = f"unrecognized arguments: {' '.join(extras)}"
    if len(hints) == 1:
        return f"{text}; did you mean {hints[0][1]}?"
    return text + "".join(f"; {flag}: did you mean {near}?" for flag, near in hints)


def parser(only: str | None = None) -> Parser:
    """The whole command line (every sub-command and its options; with *only*, the options
    of that sub-command alone: some take a second to declare, e.g. ioc's PV names)."""
    from bluesky_ptycho import __version__
    from bluesky_ptycho.cli.options import plain

    p = Parser(prog="bluesky-ptycho", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}",
        help="print the version and exit",
    )  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        mod = _module(name)
        doc = plain((mod.__doc__ or "").strip())
        cmd = sub.add_parser(name, help=mod.HELP, description=doc or mod.HELP)
        if only is None or name == only:
            mod.add_arguments(cmd)
        p.commands[name] = cmd
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    p = parser(command if command in COMMANDS else None)
    if command is None and (extras := [a for a in argv if a not in ("-h", "--help", "--version")]):
        p.error(unrecognized(p, extras))  # (argparse would only say a COMMAND is required)
    args = p.parse_args(argv)
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
