"""``omniq-observe check``: can we reach storage, and how far behind is each processor?"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from rich.table import Table
from rich.text import Text

from omniq_observe.backend import BaseEventStorage, Position, SQLiteBackend, from_url
from omniq_observe.cli._common import add_storage_argument
from omniq_observe.cli._run import (
    format_age,
    format_time,
    make_console,
    open_storage,
    print_table,
    require_existing_store,
    run_until_signal,
    safe_url,
)
from omniq_observe.events._checkpoint import CHECKPOINT_SUFFIXES

__all__ = ["inspect_storage", "register", "run"]

EXAMPLES = """\
examples:
  omniq-observe check
  omniq-observe check --storage redis://localhost:6379/0
  OMNIQ_OBSERVE_STORAGE=postgresql://app@db/events omniq-observe check --json
  omniq-observe check --integrity          # SQLite: PRAGMA quick_check over every page

For each processor (a `serve` name): its committed position, how many events are stored
after it ("behind", counted up to 100000) and "lag": the age of the oldest event it has
not handled yet (0 when caught up). Exit code 0 when storage answers, 2 when it does not,
1 when --integrity finds damage.
"""
_COUNT_CAP = 100_000
_PAGE = 5000


def register(subparsers: Any) -> None:
    """Add the ``check`` command."""
    parser = subparsers.add_parser(
        "check",
        help="storage connectivity, schema, counts, processor positions and lag",
        description="Check that storage answers; show its schema version, event counts and "
        "every processor's position and lag.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_storage_argument(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the result as JSON (default: a table)")
    parser.add_argument(
        "--integrity",
        action="store_true",
        help="also check every page of the database file (SQLite: PRAGMA quick_check; "
        "default off)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``check``; return the exit code."""
    return run_until_signal(lambda stop: _check(args, stop))


def _before(position: Position) -> Position | None:
    """The position just before ``position`` (ints, or Redis ``ms-seq`` ids)."""
    if isinstance(position, int):
        return position - 1 if position > 0 else None
    ms, _, seq = str(position).partition("-")
    if int(seq or 0) > 0:
        return f"{ms}-{int(seq) - 1}"
    return f"{int(ms) - 1}-18446744073709551615" if int(ms) > 0 else None


async def _behind(storage: BaseEventStorage, position: Position) -> tuple[int, float | None]:
    """Events after ``position`` (up to the cap) and the timestamp of the first of them."""
    count, first, after = 0, None, position
    while count < _COUNT_CAP:
        batch = await storage.read_after(after, _PAGE)
        if not batch:
            break
        if first is None:
            first = batch[0].event.timestamp.timestamp()
        count += len(batch)
        after = batch[-1].position
    return count, first


async def inspect_storage(storage: BaseEventStorage, url: str) -> dict[str, Any]:
    """Everything ``check`` shows, as a JSON-ready dict."""
    health = await storage.health()
    total = await storage.count()
    last = await storage.last_position()
    oldest = newest = None
    if last is not None:
        page = await storage.query(limit=1)
        if page.events:
            oldest = format_time(page.events[0].event.timestamp)
        newest_batch = await storage.read_after(_before(last), 1)
        if newest_batch:
            newest = format_time(newest_batch[0].event.timestamp)
    now = time.time()
    processors = []
    for name, position in sorted((await storage.positions()).items()):
        if name.endswith(CHECKPOINT_SUFFIXES):
            continue  # what a processor's reorder window holds, not a processor
        behind, first = await _behind(storage, position)
        processors.append({
            "name": name,
            "position": position,
            "behind": behind,
            "behind_capped": behind >= _COUNT_CAP,
            "lag_seconds": 0.0 if first is None else max(0.0, now - first),
        })
    dead = await storage.dead_letters()
    return {
        "storage": safe_url(url),
        "backend": health.backend,
        "ok": health.ok,
        "detail": health.detail,
        "warnings": list(health.extra.get("warnings", [])),
        "schema_version": health.schema_version,
        "events": total,
        "last_position": last,
        "oldest_event": oldest,
        "newest_event": newest,
        "dead_letters": len(dead),
        "processors": processors,
    }


async def _integrity(url: str) -> list[str] | None:
    """The problems ``PRAGMA quick_check`` finds (``[]``: none); ``None`` off SQLite."""
    storage = from_url(url)
    try:
        if not isinstance(storage, SQLiteBackend):
            return None
        require_existing_store(storage)  # checking never creates a store
        return await storage.integrity_problems()
    finally:
        await storage.close()


async def _check_integrity(args: argparse.Namespace, console: Any) -> list[str] | str:
    """Run ``--integrity``; print problems (and return them), else return "ok"/"skipped"."""
    problems = await _integrity(args.storage)
    if problems and args.json:
        report = {"storage": safe_url(args.storage), "integrity": problems}
        console.print(json.dumps(report), soft_wrap=True, markup=False, highlight=False)
    elif problems:
        console.print(f"integrity: {len(problems)} problem(s) found by PRAGMA quick_check:",
                      markup=False)
        for line in problems:
            console.print(f"  {line}", markup=False, highlight=False)
    elif not args.json:
        console.print("integrity: " + ("ok (PRAGMA quick_check)" if problems == [] else
                      "only SQLite files are checked page by page; skipped"))
    return "skipped" if problems is None else problems or "ok"


async def _check(args: argparse.Namespace, stop: asyncio.Event) -> int:
    console = make_console()
    integrity = await _check_integrity(args, console) if args.integrity else None
    if isinstance(integrity, list):
        return 1
    async with open_storage(args.storage) as storage:
        report = await inspect_storage(storage, args.storage)
    if integrity is not None:
        report["integrity"] = integrity
    if args.json:
        console.print(json.dumps(report), soft_wrap=True, markup=False, highlight=False)
        return 0
    facts = Table(box=None, pad_edge=False, show_header=False, show_edge=False)
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("storage", report["storage"])
    facts.add_row("backend", f"{report['backend']} ({report['detail']})")
    facts.add_row("status", "[green]ok[/]")
    facts.add_row("schema version", str(report["schema_version"]))
    span = ""
    if report["oldest_event"]:
        span = f" (oldest {report['oldest_event']}, newest {report['newest_event']})"
    facts.add_row("events", f"{report['events']}{span}")
    facts.add_row("dead letters", str(report["dead_letters"]))
    for warning in report["warnings"]:
        facts.add_row("warning", Text(warning, style="yellow"))
    print_table(console, facts)
    if not report["processors"]:
        console.print("processors: none has committed a position yet (run omniq-observe serve)")
        return 0
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("processor")
    table.add_column("position", justify="right")
    table.add_column("behind", justify="right")
    table.add_column("lag", justify="right")
    for row in report["processors"]:
        behind = f"{row['behind']}+" if row["behind_capped"] else str(row["behind"])
        lag = "0" if not row["behind"] else format_age(row["lag_seconds"])
        table.add_row(row["name"], str(row["position"]), behind, lag)
    console.print()
    print_table(console, table)
    return 0
