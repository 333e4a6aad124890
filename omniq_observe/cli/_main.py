"""Argument parsing and error handling for every ``omniq-observe`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from omniq_observe.cli._common import CommandError
from omniq_observe.exceptions import OmniqObserveError

__all__ = ["main"]

# Each module has register(subparsers), which adds its parser with func=run(args) -> int.
_COMMANDS = ("serve", "demo", "tail", "top", "stats", "prune", "check")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own usage errors: one line, exit code 2.
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every command that is installed."""
    parser = _Parser(
        prog="omniq-observe",
        description="Observe OmniQ task queues: store, process, export and inspect events.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"omniq_observe.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"omniq_observe.cli.{name}":
                continue  # not built yet
            raise
        module.register(sub)
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
