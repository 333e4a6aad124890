"""``omniq-observe tail`` as a subprocess: exact lines, filters, JSON, follow mode."""

from __future__ import annotations

import signal
import subprocess
import threading
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from _cli import FIXTURE, base_time, cli, fixture_events, popen, store, url
from _helpers import wait_until

from omniq_observe.models.event import TaskEvent, decode_event


def _time(t0: datetime, seconds: float) -> str:
    moment = t0 + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _expected(t0: datetime) -> list[str]:
    """Every fixture event as tail prints it, written out by hand."""
    q = {"task-a": "emails", "task-b": "emails", "task-c": "reports", "task-d": "reports",
         "task-e": "reports"}
    details = [
        "queue_name=emails",
        "worker_id=worker-1 attempt=1",
        "queue_name=emails",
        "worker_id=worker-2 attempt=1",
        'result={"sent":true}',
        "queue_name=reports",
        "queue_name=reports",
        'error="ValueError: bad address" error_type=ValueError '
        'traceback="Traceback ...\\nValueError: bad address"',
        "attempt=2 max_attempts=3",
        "worker_id=worker-1 attempt=1",
        "worker_id=worker-3 attempt=2",
        'reason="user asked"',
        "result=null",
        "queue_name=reports",
        "worker_id=worker-2 attempt=1",
        "timeout_seconds=10",
    ]
    return [
        f"{_time(t0, dt)}  {kind:<9}  {q[task]:<12}  {task}  {text}"
        for (task, kind, dt, _), text in zip(FIXTURE, details, strict=True)
    ]


@pytest.fixture
def db(tmp_path: Path) -> tuple[Path, datetime]:
    path = tmp_path / "events.db"
    t0 = base_time()
    store(path, fixture_events(t0))
    return path, t0


def test_tail_prints_the_last_10_events(db: tuple[Path, datetime]) -> None:
    path, t0 = db
    result = cli("tail", "--storage", url(path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == _expected(t0)[-10:]
    assert "\x1b[" not in result.stdout  # no colour on a pipe


def test_tail_since_prints_everything_in_order(db: tuple[Path, datetime]) -> None:
    path, t0 = db
    result = cli("tail", "--storage", url(path), "--since", "1h")
    assert result.stdout.splitlines() == _expected(t0)
    assert cli("tail", "--storage", url(path), "-n", "3").stdout.splitlines() == (
        _expected(t0)[-3:]
    )


@pytest.mark.parametrize(
    ("flags", "indexes"),
    [
        (["--type", "failed,timeout"], [7, 15]),
        (["--type", "FAILED", "--type", "cancelled"], [7, 11]),
        (["--queue", "reports"], [5, 6, 9, 11, 13, 14, 15]),
        # COMPLETED events name no queue: tail finds it in the task's history.
        (["--type", "completed", "--queue", "emails"], [4, 12]),
        (["--task", "task-b"], [2, 3, 7, 8, 10, 12]),
        (["--task", "task-b", "--type", "started"], [3, 10]),
    ],
)
def test_tail_filters(db: tuple[Path, datetime], flags: list[str], indexes: list[int]) -> None:
    path, t0 = db
    result = cli("tail", "--storage", url(path), "--since", "1d", *flags)
    assert result.returncode == 0, result.stderr
    expected = _expected(t0)
    assert result.stdout.splitlines() == [expected[i] for i in indexes]


def test_tail_json_is_the_wire_form(db: tuple[Path, datetime]) -> None:
    path, t0 = db
    result = cli("tail", "--storage", url(path), "--since", "1d", "--json")
    decoded = [decode_event(line) for line in result.stdout.splitlines()]
    assert [(e.task_id, e.event_type, e.timestamp, e.details) for e in decoded] == [
        (e.task_id, e.event_type, e.timestamp, e.details) for e in fixture_events(t0)
    ]


def _reader(proc: subprocess.Popen[str], lines: list[str]) -> threading.Thread:
    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_tail_follow_prints_new_events_and_exits_0_on_signal(
    db: tuple[Path, datetime], sig: signal.Signals
) -> None:
    path, _ = db
    proc = popen("tail", "-f", "--json", "--storage", url(path), "-n", "2")
    lines: list[str] = []
    reader = _reader(proc, lines)
    try:
        wait_until(lambda: len(lines) >= 2, timeout=20, what="the last 2 events")
        new = [
            TaskEvent(task_id="task-f", event_type="ENQUEUED", details={"queue_name": "emails"}),
            TaskEvent(task_id="task-f", event_type="STARTED", details={"worker_id": "w"}),
            TaskEvent(task_id="task-f", event_type="COMPLETED"),
        ]
        store(path, new)
        wait_until(lambda: len(lines) >= 5, timeout=20, what="3 followed events")
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    assert [decode_event(line).event_id for line in lines[2:]] == [e.event_id for e in new]
    assert [decode_event(line).task_id for line in lines[:2]] == ["task-e", "task-c"]
    assert proc.stderr is not None and proc.stderr.read() == ""


def test_tail_follow_with_a_filter_skips_other_events(db: tuple[Path, datetime]) -> None:
    path, _ = db
    proc = popen("tail", "-f", "--storage", url(path), "-n", "1", "--queue", "emails")
    lines: list[str] = []
    reader = _reader(proc, lines)
    try:
        wait_until(lambda: len(lines) >= 1, timeout=20, what="the last emails event")
        store(path, [
            TaskEvent(task_id="task-g", event_type="ENQUEUED", details={"queue_name": "other"}),
            TaskEvent(task_id="task-h", event_type="ENQUEUED", details={"queue_name": "emails"}),
            TaskEvent(task_id="task-g", event_type="STARTED"),
            TaskEvent(task_id="task-h", event_type="STARTED"),
        ])
        wait_until(lambda: len(lines) >= 3, timeout=20, what="2 new emails events")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    assert [line.split()[1:4] for line in lines] == [
        ["COMPLETED", "emails", "task-b"],
        ["ENQUEUED", "emails", "task-h"],
        ["STARTED", "emails", "task-h"],
    ]


def test_tail_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    path = tmp_path / "many.db"
    store(path, [TaskEvent(task_id=f"t{i}", event_type="ENQUEUED") for i in range(20_000)])
    tail = popen("tail", "--storage", url(path), "--since", "1d")
    head = subprocess.run(["head", "-n", "1"], stdin=tail.stdout, capture_output=True, text=True,
                          timeout=60)
    assert tail.stdout is not None
    tail.stdout.close()
    assert tail.wait(timeout=60) == 0
    assert head.stdout.split()[1:4] == ["ENQUEUED", "default", "t0"]
    assert tail.stderr is not None and tail.stderr.read() == ""
