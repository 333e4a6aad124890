"""``omniq-observe stats``: one summary table of the stored events, per queue."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import datetime, timezone
from typing import Any

from rich.table import Table

from omniq_observe._summary import EVENT_TYPES, QueueFigures, Summary, quantile
from omniq_observe.backend import BaseEventStorage, Position
from omniq_observe.cli._common import add_storage_argument, duration_type
from omniq_observe.cli._run import (
    format_age,
    format_time,
    make_console,
    open_storage,
    print_table,
    run_until_signal,
    safe_url,
)

__all__ = ["collect", "figures_json", "register", "run", "stats_table"]

EXAMPLES = """\
examples:
  omniq-observe stats                     every stored event
  omniq-observe stats --since 1h          the last hour (by event time)
  omniq-observe stats --json | jq '.queues.emails.success_ratio'

Columns: events per type; success = COMPLETED / (COMPLETED + FAILED + TIMEOUT), per
attempt (CANCELLED is left out, as in the recording rules and dashboards); p50/p95/p99 =
attempt durations (STARTED to its end);
wait = queue wait (ENQUEUED or RETRIED to STARTED). Quantiles are exact (nearest rank).
Queues and pairing follow the same rules as the Prometheus metrics of `serve`.
"""
_PAGE = 5000


def register(subparsers: Any) -> None:
    """Add the ``stats`` command."""
    parser = subparsers.add_parser(
        "stats",
        help="summary table: counts per type and queue, success ratio, durations",
        description="Summarise stored events per queue: counts per type, success ratio, "
        "duration and queue-wait quantiles.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_storage_argument(parser)
    parser.add_argument("--since", type=duration_type("since"), metavar="DURATION",
                        help="only events from this long ago, e.g. 1h, 7d (default: all)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON (default: a table)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``stats``; return the exit code."""
    return run_until_signal(lambda stop: _stats(args, stop))


async def collect(storage: BaseEventStorage, since: datetime | None) -> Summary:
    """Read every event from ``since`` (all when None) into a :class:`Summary`."""
    summary = Summary(storage.task_history)
    after: Position | None = None
    while True:
        page = await storage.query(since=since, limit=_PAGE, after=after)
        await summary.add_all(stored.event for stored in page.events)
        if page.next_cursor is None:
            summary.finish()
            return summary
        after = page.next_cursor


async def _stats(args: argparse.Namespace, stop: asyncio.Event) -> int:
    console = make_console()
    since = None if args.since is None else datetime.now(timezone.utc) - args.since
    async with open_storage(args.storage) as storage:
        summary = await collect(storage, since)
    if args.json:
        document = {
            "storage": safe_url(args.storage),
            "since": None if since is None else format_time(since),
            "events": summary.observed,
            "queues": {f.queue: figures_json(f) for f in summary.queues()},
            "total": figures_json(summary.totals()),
        }
        console.print(json.dumps(document), soft_wrap=True, markup=False, highlight=False)
        return 0
    window = "" if since is None else f" since {format_time(since)}"
    console.print(f"{safe_url(args.storage)}: {summary.observed} events{window}", soft_wrap=True)
    if summary.observed:
        print_table(console, stats_table(summary))
    return 0


def _types(summary: Summary) -> list[str]:
    seen = summary.totals().counts
    return list(EVENT_TYPES) + sorted(t for t in seen if t not in EVENT_TYPES)


def stats_table(summary: Summary) -> Table:
    """The ``stats`` table: one row per queue and a total row."""
    types = _types(summary)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    table.add_column("queue")
    for event_type in types:
        table.add_column(event_type, justify="right")
    for name in ("total", "success", "p50", "p95", "p99", "wait p50", "wait p95"):
        table.add_column(name, justify="right")
    rows = [*summary.queues(), summary.totals()]
    for figures in rows:
        ratio = figures.success_ratio
        durations, waits = figures.durations, figures.waits
        table.add_row(
            figures.queue,
            *(str(figures.counts[t]) for t in types),
            str(figures.total),
            "-" if ratio is None else f"{ratio:.1%}",
            format_age(quantile(durations, 0.5)),
            format_age(quantile(durations, 0.95)),
            format_age(quantile(durations, 0.99)),
            format_age(quantile(waits, 0.5)),
            format_age(quantile(waits, 0.95)),
            style="bold" if figures is rows[-1] else None,
        )
    return table


def figures_json(figures: QueueFigures) -> dict[str, Any]:
    """One queue's figures as ``stats --json`` prints them (seconds, ratios 0..1)."""
    counts = {t: figures.counts[t] for t in EVENT_TYPES}
    counts.update({t: n for t, n in sorted(figures.counts.items()) if t not in counts})
    return {
        "counts": counts,
        "total": figures.total,
        "success_ratio": figures.success_ratio,
        "duration_seconds": {
            f"p{int(q * 100)}": quantile(figures.durations, q) for q in (0.5, 0.95, 0.99)
        },
        "queue_wait_seconds": {
            f"p{int(q * 100)}": quantile(figures.waits, q) for q in (0.5, 0.95)
        },
    }
