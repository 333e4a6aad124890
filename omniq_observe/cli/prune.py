"""``omniq-observe prune``: delete old events, after saying how many and asking."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

from omniq_observe.backend import BaseEventStorage, Position
from omniq_observe.cli._common import CommandError, add_storage_argument, duration_type
from omniq_observe.cli._run import format_time, open_storage, run_until_signal, safe_url

__all__ = ["count_older", "register", "run"]

EXAMPLES = """\
examples:
  omniq-observe prune --older-than 7d         shows the count, asks before deleting
  omniq-observe prune --older-than 12h --yes  no question (cron, scripts)

"Older" is by event time. Without --yes the command asks on the terminal; when stdin is
not a terminal it refuses (exit 2) rather than delete unasked. Answering no exits 1.
"""
_PAGE = 10_000


def register(subparsers: Any) -> None:
    """Add the ``prune`` command."""
    parser = subparsers.add_parser(
        "prune",
        help="delete events older than a duration",
        description="Delete stored events older than a duration (by event time).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_storage_argument(parser)
    parser.add_argument("--older-than", type=duration_type("older-than"), required=True,
                        metavar="DURATION", help="e.g. 12h, 7d, 4w")
    parser.add_argument("-y", "--yes", action="store_true",
                        help="delete without asking (default: ask on the terminal)")
    parser.set_defaults(func=run)


async def count_older(storage: BaseEventStorage, cutoff: datetime) -> int:
    """Return how many stored events have ``timestamp < cutoff``."""
    found = 0
    after: Position | None = None
    while True:
        page = await storage.query(until=cutoff, limit=_PAGE, after=after)
        found += len(page.events)
        if page.next_cursor is None:
            return found
        after = page.next_cursor


def run(args: argparse.Namespace) -> int:
    """Run ``prune``; return the exit code."""
    older_than: timedelta = args.older_than
    cutoff = datetime.now(timezone.utc) - older_than
    url = safe_url(args.storage)

    async def counts(stop: asyncio.Event) -> int:
        async with open_storage(args.storage) as storage:
            total = await storage.count()
            older = await count_older(storage, cutoff)
        if older == 0:
            print(f"{url}: no events older than {_spelled(older_than)} "
                  f"(before {format_time(cutoff)}) among {total}; nothing to delete.")
        else:
            print(f"{url}: {older} of {total} events are older than {_spelled(older_than)} "
                  f"(before {format_time(cutoff)}).")
        return older

    older = run_until_signal(counts)
    if older == 0:
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            msg = (
                f"refusing to delete {older} events without confirmation: stdin is not a "
                "terminal; pass --yes to delete"
            )
            raise CommandError(msg)
        try:
            answer = input("Delete them? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing deleted.")
            return 1

    async def delete(stop: asyncio.Event) -> int:
        async with open_storage(args.storage) as storage:
            deleted = await storage.prune(older_than=cutoff)
        print(f"Deleted {deleted} events.")
        return 0

    return run_until_signal(delete)


def _spelled(duration: timedelta) -> str:
    seconds = duration.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
