"""``omniq-observe prune`` as a subprocess: counts, confirmation, refusal without a tty."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
from _cli import base_time, cli, fixture_events, store, url

from omniq_observe.models.event import TaskEvent


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """16 recent events and 5 from ten days ago."""
    path = tmp_path / "events.db"
    t0 = base_time()
    old = [
        TaskEvent(task_id=f"old-{i}", event_type="ENQUEUED", timestamp=t0 - timedelta(days=10),
                  details={"queue_name": "archive"})
        for i in range(5)
    ]
    store(path, old + fixture_events(t0))
    return path


def _count(path: Path) -> int:
    result = cli("stats", "--storage", url(path))
    return int(result.stdout.splitlines()[0].split(": ")[1].split()[0])


def _summary_line(path: Path, older: int, total: int) -> str:
    return (
        rf"{re.escape(url(path))}: {older} of {total} events are older than 7d "
        r"\(before \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\)\."
    )


def test_prune_yes_deletes_and_reports(db: Path) -> None:
    result = cli("prune", "--storage", url(db), "--older-than", "7d", "--yes")
    assert (result.returncode, result.stderr) == (0, "")
    first, second = result.stdout.splitlines()
    assert re.fullmatch(_summary_line(db, 5, 21), first), first
    assert second == "Deleted 5 events."
    assert _count(db) == 16


def test_prune_refuses_without_a_terminal(db: Path) -> None:
    result = cli("prune", "--storage", url(db), "--older-than", "1w")
    assert result.returncode == 2
    assert result.stderr == (
        "omniq-observe prune: error: refusing to delete 5 events without confirmation: "
        "stdin is not a terminal; pass --yes to delete\n"
    )
    assert _count(db) == 21


def test_prune_with_nothing_old_enough(db: Path) -> None:
    result = cli("prune", "--storage", url(db), "--older-than", "30d")
    assert result.returncode == 0
    assert re.fullmatch(
        rf"{re.escape(url(db))}: no events older than 30d \(before [^)]+\) among 21; "
        r"nothing to delete\.\n",
        result.stdout,
    )


@pytest.mark.parametrize(("answer", "code", "left"), [("y\n", 0, 16), ("n\n", 1, 21),
                                                      ("\n", 1, 21)])
def test_prune_asks_on_a_terminal(db: Path, answer: str, code: int, left: int) -> None:
    master, slave = os.openpty()
    try:
        os.write(master, answer.encode())
        result = cli("prune", "--storage", url(db), "--older-than", "168h", stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert result.returncode == code, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(_summary_line(db, 5, 21), lines[0]), lines[0]
    assert lines[1] == "Delete them? [y/N] " + ("Deleted 5 events." if code == 0 else
                                                "Nothing deleted.")
    assert _count(db) == left


def test_prune_needs_older_than(db: Path) -> None:
    result = cli("prune", "--storage", url(db))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "omniq-observe prune: error: the following arguments are required: --older-than"
    )


def test_prune_bad_duration(db: Path) -> None:
    result = cli("prune", "--storage", url(db), "--older-than", "soon", "--yes")
    assert result.returncode == 2
    assert result.stderr == (
        "omniq-observe prune: error: argument --older-than: older-than 'soon' is not a "
        "duration; use e.g. 30s, 10m, 1h, 7d\n"
    )
    assert _count(db) == 21


