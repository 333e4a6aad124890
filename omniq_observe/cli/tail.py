"""``omniq-observe tail``: print stored events, one per line, and follow new ones."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.text import Text

from omniq_observe._details import truncate
from omniq_observe._follow import later_position
from omniq_observe._summary import QueueResolver
from omniq_observe.backend import BaseEventStorage, Position
from omniq_observe.cli._common import add_storage_argument, duration_type
from omniq_observe.cli._lookup import MIN_PREFIX, check_event_types, resolve_task
from omniq_observe.cli._run import (
    format_time,
    make_console,
    open_storage,
    run_until_signal,
)
from omniq_observe.models.event import TaskEvent, encode_event

__all__ = ["format_line", "register", "run"]

EXAMPLES = """\
examples:
  omniq-observe tail                       the last 10 events
  omniq-observe tail -f                    ... and every new one until Ctrl-C
  omniq-observe tail --since 10m --type failed --type timeout
  omniq-observe tail --task 3f2a9c1e-...   one task's whole history
  omniq-observe tail --task 3f2a9c          the same: a unique prefix of 6+ characters
  omniq-observe tail -f --queue emails --json | jq .details

Text lines: time (UTC), type, queue, task id, then the details as key=value (long values
cut to 80 characters). --json prints each event's versioned wire form ({"v": 1, ...}),
exactly what omniq_observe.models.event.decode_event reads back.
"""

STYLES = {
    "ENQUEUED": "blue",
    "STARTED": "cyan",
    "COMPLETED": "green",
    "FAILED": "bold red",
    "RETRIED": "yellow",
    "CANCELLED": "magenta",
    "TIMEOUT": "red",
}
_PAGE = 2000
_POLL = 0.2
_VALUE_LIMIT = 80


def register(subparsers: Any) -> None:
    """Add the ``tail`` command."""
    parser = subparsers.add_parser(
        "tail",
        help="print stored events, one per line (-f: keep following)",
        description="Print stored events one per line, oldest first; -f keeps printing new "
        "events as they are stored.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_storage_argument(parser)
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new events (default off)")
    parser.add_argument("--task", metavar="ID",
                        help=f"only this task's events; a unique prefix of {MIN_PREFIX} or "
                        "more characters will do (default: every task)")
    parser.add_argument("--type", action="append", default=[], metavar="T",
                        help="only events of this type (repeat, or comma-separated; "
                        "default: every type)")
    parser.add_argument("--queue", metavar="Q",
                        help="only events of tasks on this queue (default: every queue)")
    parser.add_argument("--since", type=duration_type("since"), metavar="DURATION",
                        help="events from this long ago, e.g. 30s, 10m, 2h, 7d (default: "
                        "no limit)")
    parser.add_argument("-n", "--lines", type=int, default=None, metavar="N",
                        help="print the last N matching events first (default 10 without "
                        "--since or --task; all with them)")
    parser.add_argument("--json", action="store_true",
                        help="print JSON lines (wire form; default: text lines)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tail``; return the exit code."""
    return run_until_signal(lambda stop: _tail(args, stop))


class _Filter:
    def __init__(self, args: argparse.Namespace, resolver: QueueResolver) -> None:
        types = [t.strip().upper() for value in args.type for t in value.split(",") if t.strip()]
        self.types = frozenset(types) or None
        self.task = args.task
        self.queue = args.queue
        self.resolver = resolver
        self.queues_seen: set[str] = set()

    async def select(self, events: Iterable[TaskEvent]) -> list[tuple[str, TaskEvent]]:
        """Return (queue, event) for the events that pass."""
        out = []
        for event in events:
            if self.task is not None and event.task_id != self.task:
                continue
            if self.types is not None and event.event_type not in self.types:
                continue
            queue = await self.resolver.queue(event)
            self.queues_seen.add(queue)
            if self.queue is not None and queue != self.queue:
                continue
            out.append((queue, event))
        return out

    def passes_all(self) -> bool:
        """True when no type or queue filter is set (a task filter is checked apart)."""
        return self.types is None and self.queue is None


async def _tail(args: argparse.Namespace, stop: asyncio.Event) -> int:
    console = make_console()
    async with open_storage(args.storage) as storage:
        resolver = QueueResolver(storage.task_history)
        if args.task is not None:
            args.task = await resolve_task(storage, args.task)
        selector = _Filter(args, resolver)
        if selector.types:
            await check_event_types(storage, selector.types)
        start = await storage.last_position()
        lines = args.lines
        if lines is None and args.since is None and args.task is None:
            lines = 10
        printed, last = await _backlog(storage, args, selector, lines, start)
        _emit(console, printed, as_json=args.json)
        _note_unseen_queue(selector)
        if not args.follow:
            return 0
        position = start if last is None else last
        while not stop.is_set():
            batch = await storage.read_after(position, _PAGE)
            if batch:
                position = batch[-1].position
                _emit(console, await selector.select(s.event for s in batch), as_json=args.json)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), _POLL)
    return 0


Rows = list[tuple[str, TaskEvent]]


async def _backlog(
    storage: BaseEventStorage,
    args: argparse.Namespace,
    selector: _Filter,
    lines: int | None,
    start: Position | None,
) -> tuple[Rows, Position | None]:
    """The matching events already stored (the last ``lines`` of them), and the position
    of the newest event read.

    One task reads its history; the last N events of a numbered log are read directly;
    anything else scans the log with ``query``.
    """
    if lines == 0 or start is None:
        return [], None
    since = None if args.since is None else datetime.now(timezone.utc) - args.since
    if args.task is not None:
        return await _task_backlog(storage, args.task, selector, lines, since), start
    if isinstance(start, int) and lines is not None and since is None and selector.passes_all():
        return await _last_events(storage, selector, lines, start)
    return await _scanned_backlog(storage, selector, lines, since, start)


async def _task_backlog(
    storage: BaseEventStorage,
    task_id: str,
    selector: _Filter,
    lines: int | None,
    since: datetime | None,
) -> Rows:
    """The last ``lines`` matching events of one task's history, from ``since`` on."""
    history = await storage.task_history(task_id, limit=1_000_000)
    if since is not None:
        history = [e for e in history if e.timestamp >= since]
    return _last(await selector.select(history), lines)


async def _last_events(
    storage: BaseEventStorage, selector: _Filter, lines: int, start: int
) -> tuple[Rows, Position | None]:
    """The last ``lines`` events of a log numbered 1, 2, 3, ...: one read, no scan."""
    stored = await storage.read_after(max(-1, start - lines), lines)
    rows = await selector.select(s.event for s in stored)
    return _last(rows, lines), stored[-1].position if stored else start


async def _scanned_backlog(
    storage: BaseEventStorage,
    selector: _Filter,
    lines: int | None,
    since: datetime | None,
    start: Position,
) -> tuple[Rows, Position | None]:
    """The last ``lines`` matching events, found by paging through ``query``."""
    kept: collections.deque[tuple[str, TaskEvent]] = collections.deque(maxlen=lines)
    types = sorted(selector.types) if selector.types else None
    after: Position | None = None
    newest: Position | None = start
    while True:
        page = await storage.query(event_types=types, since=since, limit=_PAGE, after=after)
        kept.extend(await selector.select(s.event for s in page.events))
        if page.events:
            newest = later_position(newest, page.events[-1].position)
        if page.next_cursor is None:
            return list(kept), newest
        after = page.next_cursor


def _last(rows: Rows, lines: int | None) -> Rows:
    return rows if lines is None else rows[-lines:]


def _note_unseen_queue(selector: _Filter) -> None:
    """On stderr: the --queue asked for had no events; these queues did."""
    if selector.queue is None or selector.queue in selector.queues_seen:
        return
    seen = ", ".join(sorted(selector.queues_seen)) or "none"
    sys.stderr.write(f"note: no events on queue {selector.queue!r}; queues seen: {seen}\n")
    sys.stderr.flush()


def _emit(console: Console, rows: list[tuple[str, TaskEvent]], *, as_json: bool) -> None:
    if not rows:
        return
    if as_json:
        out = sys.stdout
        out.write("".join(encode_event(event).decode() + "\n" for _, event in rows))
        out.flush()
        return
    if console.is_terminal:
        for queue, event in rows:
            console.print(format_line(queue, event), soft_wrap=True)
        return
    sys.stdout.write("".join(format_line(q, e).plain + "\n" for q, e in rows))
    sys.stdout.flush()


def format_line(queue: str, event: TaskEvent) -> Text:
    """One event as an aligned, coloured line: time, type, queue, task id, details."""
    line = Text()
    line.append(format_time(event.timestamp), style="dim")
    line.append("  ")
    line.append(f"{event.event_type:<9}", style=STYLES.get(event.event_type, "white"))
    line.append("  ")
    line.append(f"{queue:<12}", style="bold")
    line.append("  ")
    line.append(event.task_id)
    details = " ".join(f"{key}={_value(value)}" for key, value in event.details.items())
    if details:
        line.append("  ")
        line.append(details, style="dim" if event.event_type != "FAILED" else "red")
    return line


def _value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c in value for c in " \"'\n\t=\\"):
        return truncate(value, _VALUE_LIMIT)
    return truncate(json.dumps(value, ensure_ascii=False, separators=(",", ":")), _VALUE_LIMIT)
