"""Argument parsing and error handling for every ``omniq-observe`` command."""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys
import traceback
from collections.abc import Sequence

from omniq_observe.cli._common import CommandError
from omniq_observe.exceptions import OmniqObserveError

__all__ = ["main"]

# Each module has register(subparsers), which adds its parser with func=run(args) -> int.
_COMMANDS = ("serve", "demo", "tail", "top", "stats", "prune", "check")


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")
_DEBUG_HELP = "show tracebacks on errors (also accepted before the command)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own usage errors: one line, exit code 2, with a suggestion for a typo.
        sys.stderr.write(f"{self.prog}: error: {_with_suggestion(message)}\n")
        raise SystemExit(2)


def _with_suggestion(message: str) -> str:
    """Add "did you mean ...?" to argparse's "invalid choice" message."""
    match = _INVALID_CHOICE.search(message)
    if not match:
        return message
    choices = re.findall(r"'([^']*)'", match.group(2))
    close = difflib.get_close_matches(match.group(1), choices, n=1, cutoff=0.6)
    return f"{message}; did you mean {close[0]!r}?" if close else message


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every command that is installed."""
    parser = _Parser(
        prog="omniq-observe",
        description="Observe OmniQ task queues: store, process, export and inspect events.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"omniq_observe.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"omniq_observe.cli.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    for command in sub.choices.values():
        # Global options work after the command too; SUPPRESS keeps one given before it.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=_DEBUG_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``omniq-observe``; return the exit code (2 for bad input or an unreachable server)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (CommandError, OmniqObserveError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.stderr.write(f"omniq-observe {args.command}: error: {message}\n")
        return 2
    return code
