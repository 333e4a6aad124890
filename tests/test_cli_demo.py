"""``omniq-observe demo`` as a subprocess: what it writes, what it reports, and (with
``serve``) that the exported counters equal its report."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from _cli import cli, popen, require_serve, url
from _helpers import free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

from omniq_observe._summary import EVENT_TYPES
from omniq_observe.backend import SQLiteBackend
from omniq_observe.models.event import TaskEvent

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-3]$")


def _events(path: Path) -> list[TaskEvent]:
    async def read() -> list[TaskEvent]:
        async with SQLiteBackend(path) as storage:
            return [s.event for s in await storage.read_after(None, 1_000_000)]

    return asyncio.run(read())


def _demo_json(db: Path, *args: str) -> dict[str, Any]:
    result = cli("demo", "--storage", url(db), "--json", *args)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_demo_writes_every_type_with_the_contract_details(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    started = time.time()
    report = _demo_json(db, "--tasks", "400", "--queues", "3", "--failure-rate", "0.3",
                        "--seed", "11")
    events = _events(db)
    assert report["tasks"] == 400
    assert report["events"] == len(events)
    assert report["by_type"] == dict(Counter(e.event_type for e in events))
    assert set(report["by_type"]) == set(EVENT_TYPES)
    assert sorted(report["by_queue"]) == ["emails", "payments", "reports"]

    required = {
        "ENQUEUED": {"queue_name"}, "STARTED": {"worker_id"}, "COMPLETED": {"result"},
        "FAILED": {"error", "error_type", "traceback"}, "RETRIED": {"attempt", "max_attempts"},
        "CANCELLED": {"reason"}, "TIMEOUT": {"timeout_seconds"},
    }
    for event in events:
        assert required[event.event_type] <= set(event.details), event
        if event.event_type == "ENQUEUED":
            assert TRACEPARENT.match(event.trace_context["traceparent"])
        else:
            assert event.trace_context == {}
        if event.event_type == "FAILED":
            assert event.details["error"].startswith(event.details["error_type"] + ": ")
            assert event.details["traceback"].endswith(event.details["error"])
    # Every task: one ENQUEUED first, the per-queue split matches, times never in the future.
    by_task: dict[str, list[TaskEvent]] = {}
    for event in events:
        by_task.setdefault(event.task_id, []).append(event)
    assert len(by_task) == 400
    queues: Counter[str] = Counter()
    for history in by_task.values():
        assert history[0].event_type == "ENQUEUED"
        assert [e.timestamp for e in history] == sorted(e.timestamp for e in history)
        queues[history[0].details["queue_name"]] += len(history)
    assert dict(queues) == {q: sum(c.values()) for q, c in report["by_queue"].items()}
    # The log is in event-time order and ends before the command finished.
    stamps = [e.timestamp.timestamp() for e in events]
    assert stamps == sorted(stamps)
    assert stamps[-1] <= time.time()
    assert stamps[0] >= started - 400 / 10 - 91  # --rate 10: 40 s of history, 90 s margin


def test_demo_table_matches_its_json_and_stats(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    result = cli("demo", "--storage", url(db), "--tasks", "150", "--seed", "3")
    assert (result.returncode, result.stderr) == (0, "")
    assert "\x1b[" not in result.stdout and "\r" not in result.stdout  # no bar, no colour
    lines = result.stdout.splitlines()
    again = _demo_json(tmp_path / "again.db", "--tasks", "150", "--seed", "3")
    assert lines[0] == f"Wrote {again['events']} events of 150 tasks to {url(db)}"
    assert lines[1].split() == ["queue", *EVENT_TYPES, "total"]
    rows = [line.split() for line in lines[2:]]
    assert rows == [
        [queue, *(str(counts[t]) for t in EVENT_TYPES), str(sum(counts.values()))]
        for queue, counts in sorted(again["by_queue"].items())
    ] + [["total", *(str(again["by_type"][t]) for t in EVENT_TYPES), str(again["events"])]]

    stats = json.loads(cli("stats", "--storage", url(db), "--json").stdout)
    assert stats["events"] == again["events"]
    assert {q: f["counts"] for q, f in stats["queues"].items()} == again["by_queue"]
    tail = cli("tail", "--storage", url(db), "--since", "1d", "--json")
    assert len(tail.stdout.splitlines()) == again["events"]


def test_demo_shows_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    master, slave = os.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        result = cli("demo", "--storage", url(tmp_path / "tty.db"), "--tasks", "20000",
                     stdout=slave, stderr=slave, timeout=120)
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert result.returncode == 0
    assert "writing tasks" in screen
    assert "/20000" in screen
    assert "of 20000 tasks to" in screen


def _scrape(port: int) -> Counter[tuple[str, str]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "omniq_task_events_total":
                counts[(sample.labels["queue"], sample.labels["event_type"])] += int(sample.value)
    return counts


def _expected(report: dict[str, Any]) -> Counter[tuple[str, str]]:
    return Counter({
        (queue, kind): n
        for queue, counts in report["by_queue"].items()
        for kind, n in counts.items() if n
    })


def _scrape_when_up(port: int) -> Counter[tuple[str, str]] | None:
    try:
        return _scrape(port)
    except OSError:
        return None


def test_serve_exports_exactly_what_demo_wrote(tmp_path: Path) -> None:
    require_serve()
    db = tmp_path / "demo.db"
    report = _demo_json(db, "--tasks", "500", "--failure-rate", "0.25", "--seed", "21")
    expected = _expected(report)
    port = free_port()
    # serve logs every event: nobody reads them here, so they must not fill a pipe.
    server = popen("serve", "--storage", url(db), "--port", str(port),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _scrape_when_up(port) == expected, timeout=60,
                   what="serve to export every event demo wrote")
        assert sum(_scrape(port).values()) == report["events"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(timeout=30) == 0
        finally:
            if server.poll() is None:
                server.kill()


def test_demo_serve_runs_until_sigterm_and_exports_its_events(tmp_path: Path) -> None:
    require_serve()
    db = tmp_path / "demo.db"
    port = free_port()
    proc = popen("demo", "--serve", "--storage", url(db), "--port", str(port), "--tasks", "200",
                 "--rate", "0", "--seed", "4", "--json")
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("Web view" in line for line in lines), timeout=60,
                   what="demo to say where /metrics and the web view are")
        report = json.loads(lines[0])
        assert f"Serving http://127.0.0.1:{port}/metrics" in "\n".join(lines)
        assert f"Web view: http://127.0.0.1:{port}/" in lines
        wait_until(lambda: _scrape_when_up(port) == _expected(report), timeout=60,
                   what="the processor to catch up")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    assert json.loads(lines[-1]) == report  # --rate 0: nothing more was written


def test_demo_serve_on_a_busy_port_fails_before_writing(tmp_path: Path) -> None:
    require_serve()
    import socket

    db = tmp_path / "busy.db"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("demo", "--serve", "--storage", url(db), "--port", str(port))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"omniq-observe demo: error: cannot serve on 127.0.0.1:{port}: address already in use; "
        "pick another --port\n"
    )
    assert not db.exists()
