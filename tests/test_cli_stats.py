"""``omniq-observe stats`` as a subprocess on a SQLite file with known events."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from _cli import base_time, cli, fixture_events, store, url

from omniq_observe.models.event import TaskEvent

HEADER = (
    "queue    ENQUEUED  STARTED  COMPLETED  FAILED  RETRIED  CANCELLED  TIMEOUT  total  "
    "success    p50    p95    p99  wait p50  wait p95"
)


def test_stats_table_is_exact(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store(db, fixture_events(base_time()))
    result = cli("stats", "--storage", url(db))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"{url(db)}: 16 events",
        HEADER,
        "emails          2        3          2       1        1          0        0      9  "
        "  66.7%   2.0s   2.0s   2.0s      1.0s      1.0s",
        "reports         3        2          0       0        0          1        1      7  "
        "   0.0%  10.0s  10.0s  10.0s      1.0s      2.0s",
        "total           5        5          2       1        1          1        1     16  "
        "  50.0%   2.0s  10.0s  10.0s      1.0s      2.0s",
    ]


def test_stats_json_since_leaves_older_events_out(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    t0 = base_time()
    old = [
        TaskEvent(task_id="task-old", event_type="ENQUEUED", timestamp=t0 - timedelta(days=3),
                  details={"queue_name": "archive"}),
        TaskEvent(task_id="task-old", event_type="EXPIRED", timestamp=t0 - timedelta(days=3)),
    ]
    store(db, old + fixture_events(t0))

    everything = json.loads(cli("stats", "--storage", url(db), "--json").stdout)
    assert everything["events"] == 18
    assert everything["since"] is None
    assert everything["queues"]["archive"]["counts"] == {
        "ENQUEUED": 1, "STARTED": 0, "COMPLETED": 0, "FAILED": 0, "RETRIED": 0,
        "CANCELLED": 0, "TIMEOUT": 0, "EXPIRED": 1,
    }

    recent = json.loads(cli("stats", "--storage", url(db), "--since", "1h", "--json").stdout)
    assert recent["events"] == 16
    assert sorted(recent["queues"]) == ["emails", "reports"]
    emails = recent["queues"]["emails"]
    assert emails["counts"] == {
        "ENQUEUED": 2, "STARTED": 3, "COMPLETED": 2, "FAILED": 1, "RETRIED": 1,
        "CANCELLED": 0, "TIMEOUT": 0,
    }
    assert emails["total"] == 9
    assert emails["success_ratio"] == 2 / 3
    assert emails["duration_seconds"] == {"p50": 2.0, "p95": 2.0, "p99": 2.0}
    assert emails["queue_wait_seconds"] == {"p50": 1.0, "p95": 1.0}
    reports = recent["queues"]["reports"]
    assert reports["success_ratio"] == 0.0
    assert reports["duration_seconds"] == {"p50": 10.0, "p95": 10.0, "p99": 10.0}
    assert reports["queue_wait_seconds"] == {"p50": 1.0, "p95": 2.0}
    assert recent["total"]["total"] == 16
    assert recent["total"]["success_ratio"] == 2 / 4  # CANCELLED is not a finished attempt


def test_stats_custom_type_gets_a_column(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    t0 = base_time()
    store(db, [
        TaskEvent(task_id="t", event_type="ENQUEUED", timestamp=t0, details={"queue": "q"}),
        TaskEvent(task_id="t", event_type="expired", timestamp=t0 + timedelta(seconds=1)),
    ])
    lines = cli("stats", "--storage", url(db)).stdout.splitlines()
    assert lines[1].split() == [
        "queue", "ENQUEUED", "STARTED", "COMPLETED", "FAILED", "RETRIED", "CANCELLED",
        "TIMEOUT", "EXPIRED", "total", "success", "p50", "p95", "p99", "wait", "p50", "wait",
        "p95",
    ]
    assert lines[2].split() == ["q", "1", "0", "0", "0", "0", "0", "0", "1", "2", "-", "-", "-",
                                "-", "-", "-"]


def test_stats_on_empty_storage(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    assert cli("demo", "--tasks", "0", "--storage", url(db)).returncode == 0  # an empty store
    result = cli("stats", "--storage", url(db))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{url(db)}: 0 events\n", "")
