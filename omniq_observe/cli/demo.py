"""``omniq-observe demo``: write a realistic OmniQ workload, optionally serve its metrics."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from omniq_observe._summary import EVENT_TYPES
from omniq_observe.backend import BaseEventStorage, SQLiteBackend, from_url
from omniq_observe.cli._common import (
    TCP_PORT,
    CommandError,
    add_storage_argument,
    address_error,
    bounded,
    env_default,
)
from omniq_observe.cli._run import (
    make_console,
    open_storage,
    print_table,
    run_until_signal,
    safe_url,
)
from omniq_observe.cli._workload import (
    DEFAULT_FAILURE_RATE,
    INCIDENT_FAILURE_RATE,
    MAX_TASK_SPAN,
    QUEUE_PROFILES,
    Tally,
    Workload,
    backfill,
    run_live,
)
from omniq_observe.events.logger import AsyncEventLogger

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  omniq-observe demo --serve
      write 1000 tasks into ./omniq-events.db, then serve http://127.0.0.1:9464/metrics
      while new tasks keep coming (10 per second); Ctrl-C stops
  omniq-observe demo --tasks 50000 --queues 6 --failure-rate 0.2
      write a bigger history and print what was written
  omniq-observe demo --serve --incident --fresh
      a new file; one minute into serving, the payments queue starts failing
      most attempts, so the alerts and dashboards have something to show
  omniq-observe demo --storage redis://localhost:6379/0 --serve --rate 50 --port 9465
  omniq-observe demo --json --seed 7
      the same workload every time; the counts as JSON

Timestamps are synthetic: the --tasks tasks are laid out in the past (--rate per second,
ending before now); with --serve new tasks then arrive in real time at --rate per second
(--rate 0: none) and each event is written when its time comes. When the store already
holds an earlier demo's history, pass --append to add to it or --fresh to start a new
file. Ctrl-C while the history is written stops within half a second, reports what was
written and exits 130.
"""
#: Seconds into ``demo --serve`` at which ``--incident`` begins.
INCIDENT_DELAY = 60.0
_DEMO_TASK_NAMES = frozenset(name for p in QUEUE_PROFILES for name in p.task_names)

RunServer = Callable[..., Coroutine[Any, Any, None]]


_TASKS = bounded("tasks", int, 0, 10**9, "a non-negative integer")
_QUEUES = bounded("queues", int, 1, 10**6, "a positive integer")
_FAILURE_RATE = bounded("failure rate", float, 0.0, 1.0, "a number between 0 and 1")
_RATE = bounded("rate", float, 0.0, 1e6, "a number of tasks per second (0 to 1000000)")


def register(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    parser = subparsers.add_parser(
        "demo",
        help="write a realistic demo workload (and serve its metrics)",
        description="Write a realistic OmniQ workload into storage: all seven event types, "
        "retries, timeouts and cancellations, queue waits, durations and trace context.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_storage_argument(parser)
    parser.add_argument("--tasks", type=_TASKS, default=1000, metavar="N",
                        help="tasks written up front (default 1000)")
    parser.add_argument("--queues", type=_QUEUES, default=4, metavar="K",
                        help="how many queues (default 4)")
    parser.add_argument("--failure-rate", type=_FAILURE_RATE, default=DEFAULT_FAILURE_RATE,
                        metavar="F", help="chance that one attempt fails or times out "
                        f"(default {DEFAULT_FAILURE_RATE:g}; the failure alert fires above 0.1)")
    parser.add_argument("--incident", action="store_true",
                        help="the second queue (payments) starts failing "
                        f"{INCIDENT_FAILURE_RATE * 100:.0f}%% of its attempts halfway through the "
                        f"history, or {INCIDENT_DELAY:g}s into --serve (default off)")
    parser.add_argument("--rate", type=_RATE, default=10.0, metavar="R",
                        help="tasks per second: the spacing of the history, and the live "
                        "rate with --serve (default 10)")
    parser.add_argument("--seed", type=int, default=None,
                        help="repeatable workload (default: a new one each run)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--append", action="store_true",
                       help="add to a store that already holds demo history (default: refuse)")
    again.add_argument("--fresh", action="store_true",
                       help="delete the SQLite file first and start a new one (default off)")
    parser.add_argument("--serve", action="store_true",
                        help="then run the processor and /metrics until Ctrl-C (default off)")
    parser.add_argument("--host", default=env_default("host", "127.0.0.1"),
                        help="--serve address (env OMNIQ_OBSERVE_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=TCP_PORT, default=env_default("port", "9464"),
                        help="--serve port (env OMNIQ_OBSERVE_PORT; default 9464)")
    parser.add_argument("--name", default=env_default("name", "default"),
                        help="--serve processor name (env OMNIQ_OBSERVE_NAME; default default)")
    parser.add_argument("--log-level", default="critical", type=str.lower,
                        choices=("debug", "info", "warning", "error", "critical"),
                        help="--serve log level: debug logs every event, info the server's "
                        "start and stop; the default, critical, keeps the terminal for this "
                        "command's own output")
    parser.add_argument("--json", action="store_true",
                        help="print the counts as JSON (default: a table)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``demo``; return the exit code."""
    run_server = _load_run_server() if args.serve else None
    return run_until_signal(lambda stop: _demo(args, stop, run_server))


def _load_run_server() -> RunServer:
    try:
        from omniq_observe.cli.serve import run_server  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        msg = f"--serve needs omniq_observe.cli.serve.run_server, which is not available: {exc}"
        raise CommandError(msg) from None
    server: RunServer = run_server
    return server


async def _demo(args: argparse.Namespace, stop: asyncio.Event, run_server: RunServer | None) -> int:
    console = make_console()
    if run_server is not None:
        _check_port(args.host, args.port)
    if args.fresh:
        _start_fresh(args.storage)
    workload = Workload(queues=args.queues, failure_rate=args.failure_rate, seed=args.seed,
                        incident=_incident(args))
    async with open_storage(args.storage, create=True) as storage:
        if not (args.append or args.fresh):
            await _refuse_earlier_demo(storage, args.storage)
        logger = AsyncEventLogger(storage)
        # With --rate 0 the history still needs a spacing; one task per second reads well.
        tally = await write_history(
            logger, workload, args.tasks, rate=args.rate or 1.0, console=console, stop=stop
        )
        if stop.is_set():
            report(console, tally, args.storage, as_json=args.json, interrupted=True)
            return 130
        report(console, tally, args.storage, as_json=args.json)
        if run_server is None:
            return 0
        await _serve(args, storage, logger, workload, tally, stop, run_server, console)
        report(console, tally, args.storage, as_json=args.json, final=True)
    return 0


def _incident(args: argparse.Namespace) -> tuple[str, float] | None:
    """The queue in trouble with ``--incident``, and when its trouble begins."""
    if not args.incident:
        return None
    queue = QUEUE_PROFILES[1 if args.queues > 1 else 0].name
    if args.serve:
        return queue, time.time() + INCIDENT_DELAY
    history = args.tasks / (args.rate or 1.0)
    return queue, time.time() - MAX_TASK_SPAN - history / 2


def _start_fresh(url: str) -> None:
    """``--fresh``: delete the SQLite file (and its WAL files) before writing."""
    storage = from_url(url)
    if not isinstance(storage, SQLiteBackend):
        if url.lower().startswith("memory:"):
            return
        msg = (
            f"--fresh deletes a SQLite file; {safe_url(url)} is not one "
            "(use `omniq-observe prune`, or another prefix or schema)"
        )
        raise CommandError(msg)
    for suffix in ("", "-wal", "-shm"):
        storage.path.with_name(storage.path.name + suffix).unlink(missing_ok=True)


async def _refuse_earlier_demo(storage: BaseEventStorage, url: str) -> None:
    """Stop when ``storage`` already holds demo history, naming the two ways on."""
    page = await storage.query(event_types=["ENQUEUED"], limit=1)
    if not page.events or not _is_demo_event(page.events[0].event.details):
        return
    count = await storage.count()
    msg = (
        f"{safe_url(url)} already holds {count} events, from an earlier demo; "
        "pass --append to add to them, or --fresh to start a new file"
    )
    raise CommandError(msg)


def _is_demo_event(details: dict[str, Any]) -> bool:
    """Whether an ENQUEUED's details are those the demo workload writes."""
    return set(details) == {"queue_name", "task_name"} and (
        details["task_name"] in _DEMO_TASK_NAMES
    )


def _check_port(host: str, port: int) -> None:
    """Fail before writing anything when --serve could not listen on ``host:port``."""
    if port == 0:
        return
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise address_error(host, port, exc) from None


async def write_history(
    logger: AsyncEventLogger,
    workload: Workload,
    tasks: int,
    *,
    rate: float,
    console: Console,
    show_progress: bool | None = None,
    stop: asyncio.Event | None = None,
) -> Tally:
    """Write ``tasks`` tasks of history, with a progress bar when ``console`` is a terminal;
    ``stop`` (Ctrl-C) ends it after the batch in flight."""
    if show_progress is None:
        show_progress = console.is_terminal
    if not show_progress or tasks == 0:
        return await backfill(logger, workload, tasks, rate=rate, stop=stop)
    columns = (
        TextColumn("writing tasks"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    )
    with Progress(*columns, console=console, transient=True, refresh_per_second=4) as progress:
        bar = progress.add_task("tasks", total=tasks)
        return await backfill(
            logger, workload, tasks, rate=rate,
            on_progress=lambda done: progress.advance(bar, done), stop=stop,
        )


async def _serve(
    args: argparse.Namespace,
    storage: BaseEventStorage,
    logger: AsyncEventLogger,
    workload: Workload,
    tally: Tally,
    stop: asyncio.Event,
    run_server: RunServer,
    console: Console,
) -> None:
    def ready(port: int) -> None:
        live = f"{args.rate:g} new tasks per second" if args.rate else "no new tasks (--rate 0)"
        console.print(
            f"\nServing http://{args.host}:{port}/metrics (health: /healthz); writing {live}.\n"
            f"Web view: http://{args.host}:{port}/\n"
            f"In another terminal: omniq-observe top --storage {safe_url(args.storage)}\n"
            "Press Ctrl-C to stop.",
            soft_wrap=True,
        )

    server = asyncio.create_task(
        run_server(storage, host=args.host, port=args.port, name=args.name, stop=stop,
                   ready=ready, log_level=args.log_level)
    )
    live = asyncio.create_task(run_live(logger, workload, rate=args.rate, stop=stop, tally=tally))
    try:
        await asyncio.wait({server, live}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        await asyncio.gather(server, live, return_exceptions=True)
    for task in (server, live):
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


def tally_json(tally: Tally, storage: str) -> dict[str, Any]:
    """The tally as printed by ``demo --json``."""
    return {
        "storage": safe_url(storage),
        "tasks": tally.tasks,
        "events": tally.events,
        "by_type": {t: tally.by_type()[t] for t in _types(tally)},
        "by_queue": {
            queue: {t: tally.counts[queue][t] for t in _types(tally)}
            for queue in sorted(tally.counts)
        },
    }


def _types(tally: Tally) -> list[str]:
    seen = tally.by_type()
    return list(EVENT_TYPES) + sorted(t for t in seen if t not in EVENT_TYPES)


def report(
    console: Console,
    tally: Tally,
    storage: str,
    *,
    as_json: bool = False,
    final: bool = False,
    interrupted: bool = False,
) -> None:
    """Print exactly what was written: events per type and per queue."""
    if as_json:
        document = tally_json(tally, storage)
        if interrupted:
            document["interrupted"] = True
        console.print(json.dumps(document), soft_wrap=True, markup=False, highlight=False)
        return
    what = "In total wrote" if final else "Wrote"
    if interrupted:
        what = "Interrupted: wrote"
    console.print(
        f"{what} {tally.events} events of {tally.tasks} tasks to {safe_url(storage)}",
        soft_wrap=True,
    )
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    types = _types(tally)
    table.add_column("queue")
    for event_type in types:
        table.add_column(event_type, justify="right")
    table.add_column("total", justify="right")
    for queue in sorted(tally.counts):
        counts = tally.counts[queue]
        table.add_row(queue, *(str(counts[t]) for t in types), str(sum(counts.values())))
    by_type = tally.by_type()
    table.add_row("total", *(str(by_type[t]) for t in types), str(tally.events), style="bold")
    print_table(console, table)
