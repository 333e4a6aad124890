"""``omniq-observe top``: the model and its rendering, a snapshot subprocess, and the live
view driven in a real terminal (tmux)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from _cli import IN_CI, base_time, cli, fixture_events, store, url
from _helpers import wait_until
from rich.console import Console

from omniq_observe._summary import QueueLive, Summary
from omniq_observe.backend import SQLiteBackend
from omniq_observe.cli.top import TopView, render_top
from omniq_observe.models.event import TaskEvent


def _render(rows: list[QueueLive], **kwargs: object) -> list[str]:
    console = Console(record=True, width=120, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(render_top(rows, title="omniq-observe top  test", **kwargs))  # type: ignore[arg-type]
    console.file.close()
    return [line.rstrip() for line in console.export_text().splitlines()]


def test_top_rows_over_the_window() -> None:
    t0 = base_time()
    summary = Summary(window=10.0)
    for event in fixture_events(t0):
        summary.add_now(event)
    now = t0.timestamp() + 16
    rows = summary.live(now)
    assert [r.queue for r in rows] == ["emails", "reports"]
    emails, reports = rows
    # window [t0+6, t0+16]: emails has STARTED and COMPLETED of task-b's second attempt.
    assert emails == QueueLive("emails", 0.2, 0, 0.1, 0.0, 1.0, 1.0, 1.0, None, None)
    # reports: CANCELLED(d), ENQUEUED(e), STARTED(e), TIMEOUT(c); task-e still running.
    assert reports == QueueLive("reports", 0.4, 1, 0.0, 0.1, 10.0, 10.0, 1.0, "task-e", 5.0)
    total = summary.live_total(now)
    assert total == QueueLive("total", 0.6, 1, 0.1, 0.1, 1.0, 10.0, 1.0, "task-e", 5.0)
    assert _render(rows, window=10.0, newest_age=1.0, total=total) == [
        "omniq-observe top  test   window 10.0s   newest 1.0s ago",
        "queue    ev/s  run  done/s  fail/s    p50    p95  wait95  oldest  task",
        "emails    0.2    0     0.1     0.0   1.0s   1.0s    1.0s       -  -",
        "reports   0.4    1     0.0     0.1  10.0s  10.0s    1.0s    5.0s  task-e",
        "total     0.6    1     0.1     0.1   1.0s  10.0s    1.0s    5.0s  task-e",
    ]
    # Narrow: p50, ev/s, wait95, done/s and the id go, in that order; the key line stays.
    assert _render(rows, window=10.0, newest_age=1.0, total=total, width=40, keys=True) == [
        "omniq-observe top  test   window 10.0s   newest 1.0s ago",
        "queue    run  fail/s    p95  oldest",
        "emails     0     0.0   1.0s       -",
        "reports    1     0.1  10.0s    5.0s",
        "total      1     0.1  10.0s    5.0s",
        "q quit   fail/s = FAILED+TIMEOUT per second   oldest, task = longest running",
    ]


def test_top_window_slides_and_running_tasks_end() -> None:
    t0 = base_time()
    summary = Summary(window=10.0)
    for event in fixture_events(t0):
        summary.add_now(event)
    later = t0.timestamp() + 30  # nothing inside [t0+20, t0+30]
    assert [(r.queue, r.events_per_second, r.running, r.duration_p50, r.oldest_age)
            for r in summary.live(later)] == [
        ("emails", 0.0, 0, None, None),
        ("reports", 0.0, 1, None, 19.0),
    ]
    summary.add_now(TaskEvent(task_id="task-e", event_type="COMPLETED",
                              timestamp=t0 + timedelta(seconds=29)))
    reports = summary.live(later)[1]
    assert (reports.running, reports.completed_per_second, reports.duration_p50) == (0, 0.1, 18.0)


def test_top_renders_an_empty_storage() -> None:
    assert _render([], window=60.0, newest_age=None) == [
        "omniq-observe top  test   window 1m00s   newest - ago",
        "queue            ev/s  run  done/s  fail/s  p50  p95  wait95  oldest  task",
        "(no events yet)",
    ]


async def test_top_view_reads_history_then_follows(tmp_path: Path) -> None:
    t0 = base_time()
    events = fixture_events(t0)
    async with SQLiteBackend(tmp_path / "events.db") as storage:
        await storage.append(events[:12])
        view = TopView(storage, window=600.0)
        # The history read starts after task-c's STARTED: its TIMEOUT still pairs (history).
        await view.load(t0 + timedelta(seconds=5.5))
        assert view.summary.observed == 2
        await storage.append(events[12:])
        assert await view.poll() == 4
        assert await view.poll() == 0
        rows = {r.queue: r for r in view.rows(t0.timestamp() + 20)}
        assert (rows["reports"].running, rows["reports"].duration_p50) == (1, 10.0)
        assert rows["reports"].oldest_task == "task-e"
        assert rows["emails"].duration_p50 == 1.0


def test_top_once_prints_a_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store(db, fixture_events(base_time()))
    result = cli("top", "--storage", url(db), "--window", "30s")
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"omniq-observe top  {url(db)}   window 30.0s   newest 1m")
    assert lines[1:3] == [
        "queue    ev/s  run  done/s  fail/s  p50  p95  wait95  oldest  task",
        "emails    0.0    0     0.0     0.0    -    -       -       -  -",
    ]
    assert lines[3].startswith("reports   0.0    1     0.0     0.0    -    -       -   1m")
    assert lines[3].endswith("  task-e")
    assert lines[4].startswith("total     0.0    1     0.0     0.0    -    -       -   1m")
    assert lines[4].endswith("  task-e")
    assert len(lines) == 5  # no key line: a snapshot takes no keys


def _tmux_available() -> None:
    if shutil.which("tmux") is None:
        if IN_CI:
            pytest.fail("tmux is not installed (CI=true)")
        pytest.skip("tmux is not installed")


def test_top_live_in_a_terminal_refreshes_and_q_quits(tmp_path: Path) -> None:
    _tmux_available()
    import sys

    db = tmp_path / "events.db"
    store(db, fixture_events(base_time()))
    done = tmp_path / "exit-code"
    session = f"omniq-top-{uuid.uuid4().hex[:8]}"
    command = (
        f"{sys.executable} -m omniq_observe top --storage {url(db)} --interval 0.2s; "
        f"echo $? > {done}"
    )
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "140", "-y", "30",
                    command], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                              capture_output=True, text=True).stdout

    try:
        wait_until(lambda: "reports" in screen(), timeout=30, what="the top screen")
        assert "task-e" in screen()
        store(db, [
            TaskEvent(task_id="task-live", event_type="ENQUEUED", details={"queue_name": "live"}),
            TaskEvent(task_id="task-live", event_type="STARTED", details={"worker_id": "w"}),
        ])
        wait_until(lambda: "task-liv" in screen(), timeout=30, what="the new queue's row")
        row = next(line for line in screen().splitlines() if line.startswith("live"))
        assert row.split()[1:4] == ["0.0", "1", "0.0"]  # 2 events / 60s rounds to 0.0
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        wait_until(lambda: done.exists() and done.read_text().strip(), timeout=30,
                   what="top to quit on q")
        assert done.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
