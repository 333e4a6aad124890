"""``omniq-observe top``: a live per-queue view of the stored events."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from omniq_observe._follow import StorageFollower
from omniq_observe._summary import QueueLive, Summary
from omniq_observe.backend import BaseEventStorage, Position
from omniq_observe.cli._common import add_storage_argument, duration_type
from omniq_observe.cli._run import (
    format_age,
    make_console,
    open_storage,
    print_table,
    run_until_signal,
    safe_url,
)

__all__ = ["TopView", "register", "render_top", "run"]

EXAMPLES = """\
examples:
  omniq-observe top
  omniq-observe top --storage redis://localhost:6379/0 --window 5m
  omniq-observe top --once | less          one snapshot (the default when piped)

Per queue and in total: events/s (ev/s), tasks running now (run), completed/s (done/s)
and failed/s (fail/s: FAILED + TIMEOUT), p50/p95 attempt duration and p95 queue wait
(wait95) over the last --window of event time, and the oldest running task: its age
(oldest) and the first 8 characters of its id (task, which tail --task accepts). It reads
the last --since of history, then follows new events, refreshing every --interval.
Narrow terminals drop p50, ev/s, wait95, done/s and task, in that order. q or Ctrl-C quits.
"""
_PAGE = 5000
#: The columns of ``top``, left to right.
COLUMNS = ("queue", "ev/s", "run", "done/s", "fail/s", "p50", "p95", "wait95", "oldest", "task")
_DROP_ORDER = ("p50", "ev/s", "wait95", "done/s", "task")
_GAP = 2
_ID_WIDTH = 8
_QUEUE_WIDTH = 16
KEY_LINE = "q quit   fail/s = FAILED+TIMEOUT per second   oldest, task = longest running"


def register(subparsers: Any) -> None:
    """Add the ``top`` command."""
    parser = subparsers.add_parser(
        "top",
        help="live per-queue view: rates, running tasks, durations",
        description="A live terminal view of task queues, computed from the stored events.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_storage_argument(parser)
    parser.add_argument("--window", type=duration_type("window"), default=timedelta(seconds=60),
                        metavar="DURATION", help="rates and quantiles over this (default 60s)")
    parser.add_argument("--since", type=duration_type("since"), default=timedelta(minutes=15),
                        metavar="DURATION", help="history read at start (default 15m)")
    parser.add_argument("--interval", type=duration_type("interval"),
                        default=timedelta(seconds=1), metavar="DURATION",
                        help="refresh interval (default 1s)")
    parser.add_argument("--once", action="store_true",
                        help="print one snapshot and exit (the default when stdout is piped)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``top``; return the exit code."""
    return run_until_signal(lambda stop: _top(args, stop))


class TopView:
    """The state behind the screen: a windowed :class:`Summary` fed from storage.

    Args:
        storage: where events are read (only ``query`` and ``read_after`` are used, plus
            ``task_history`` for tasks that began before the history read).
        window: seconds rates and quantiles cover.
    """

    def __init__(self, storage: BaseEventStorage, window: float) -> None:
        self.storage = storage
        self.summary = Summary(storage.task_history, window=window)
        self.follower = StorageFollower(storage, self.summary.add_all, _PAGE)

    @property
    def position(self) -> Position | None:
        """Where the next poll reads from."""
        return self.follower.position

    async def load(self, since: datetime) -> None:
        """Read the history from ``since``, then remember where the log ends."""
        await self.follower.load(since)

    async def poll(self) -> int:
        """Read every event stored since the last call; return how many."""
        read = await self.follower.poll()
        self.summary.finish(time.time())  # caught up: decide what waited for the window
        return read

    def rows(self, now: float) -> list[QueueLive]:
        """The table rows at ``now`` (epoch seconds)."""
        return self.summary.live(now)


def _rate(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _cells(row: QueueLive) -> dict[str, str]:
    return {
        "queue": row.queue,
        "ev/s": _rate(row.events_per_second),
        "run": str(row.running),
        "done/s": _rate(row.completed_per_second),
        "fail/s": _rate(row.failed_per_second),
        "p50": format_age(row.duration_p50),
        "p95": format_age(row.duration_p95),
        "wait95": format_age(row.wait_p95),
        "oldest": format_age(row.oldest_age),
        "task": "-" if row.oldest_task is None else row.oldest_task[:_ID_WIDTH],
    }


def fit_columns(cells: list[dict[str, str]], width: int) -> list[str]:
    """The columns that fit ``width`` characters, dropping the least needed ones first."""
    columns = list(COLUMNS)
    widths = {c: max([len(c), *(len(row[c]) for row in cells)]) for c in columns}

    def needed() -> int:
        return sum(widths[c] for c in columns) + _GAP * (len(columns) - 1)

    for column in _DROP_ORDER:
        if needed() <= width:
            break
        columns.remove(column)
    return columns


def render_top(
    rows: list[QueueLive],
    *,
    title: str,
    window: float,
    newest_age: float | None,
    total: QueueLive | None = None,
    width: int = 80,
    keys: bool = False,
) -> Group:
    """The screen: a title line, the per-queue table with a total row, and the key line.

    Columns that do not fit ``width`` are dropped (p50 first, then events/s, wait p95,
    done/s and the oldest task's id); long queue names are shortened.
    """
    header = Text(title, style="bold", no_wrap=True, overflow="ellipsis")
    header.append(
        f"   window {format_age(window)}   newest {format_age(newest_age)} ago",
        style="dim",
    )
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold reverse")
    body = [_cells(row) for row in rows]
    for cells in body:
        if len(cells["queue"]) > _QUEUE_WIDTH:
            cells["queue"] = cells["queue"][: _QUEUE_WIDTH - 1] + "~"
    footer = [] if total is None or not rows else [_cells(total)]
    columns = fit_columns(body + footer, width)
    for name in columns:
        table.add_column(name, justify="left" if name in ("queue", "task") else "right")
    for cells, row in zip(body, rows, strict=True):
        style = "red" if row.failed_per_second else ""
        table.add_row(*(Text(cells[c], style=style if c == "fail/s" else "") for c in columns))
    for cells in footer:
        table.add_row(*(cells[c] for c in columns), style="bold")
    if not rows:
        table.add_row("(no events yet)", *([""] * (len(columns) - 1)))
    parts: list[Text | Table] = [header, table]
    if keys:
        parts.append(Text(KEY_LINE, style="dim", no_wrap=True, overflow="ellipsis"))
    return Group(*parts)


@contextlib.contextmanager
def _keys(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` when q is pressed (stdin in cbreak mode while the view runs)."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def on_key() -> None:
        key = sys.stdin.read(1)
        if key in ("q", "Q", "\x03", ""):
            stop.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _top(args: argparse.Namespace, stop: asyncio.Event) -> int:
    console = make_console()
    window = args.window.total_seconds()
    title = f"omniq-observe top  {safe_url(args.storage)}"
    async with open_storage(args.storage) as storage:
        view = TopView(storage, window)
        await view.load(datetime.now(timezone.utc) - args.since)

        live_view = not (args.once or not console.is_terminal)

        def screen() -> Group:
            now = time.time()
            newest = view.summary.newest
            age = None if newest is None else max(0.0, now - newest)
            return render_top(
                view.rows(now), title=title, window=window, newest_age=age,
                total=view.summary.live_total(now), width=console.width, keys=live_view,
            )

        if not live_view:
            print_table(console, screen())
            return 0
        interval = max(0.05, args.interval.total_seconds())
        with _keys(stop), Live(screen(), console=console, auto_refresh=False, screen=True) as live:
            while not stop.is_set():
                await view.poll()
                live.update(screen(), refresh=True)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
    return 0
