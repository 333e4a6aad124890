"""The web view's live figures, failures and task lookup, in process (no server)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from _cli import fixture_events

from omniq_observe._summary import Summary
from omniq_observe.backend import MemoryBackend
from omniq_observe.models.event import TaskEvent
from omniq_observe.web._live import LiveFigures
from omniq_observe.web._state import TaskLookup, WebState

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def live(clock: Clock) -> LiveFigures:
    return LiveFigures(None, clock, lambda e: str(e.details.get("error_type", "unknown")))


async def test_rows_follow_the_definitions_of_top() -> None:
    clock = Clock((T0 + timedelta(seconds=20)).timestamp())
    figures, summary = live(clock), Summary(window=300.0)
    for event in fixture_events(T0):
        await figures.add(event)
        summary.add_now(event)
    rows = figures.queues("5m")
    top = summary.live(clock.now)
    assert [r["queue"] for r in rows] == [t.queue for t in top] == ["emails", "reports"]
    for row, expected in zip(rows, top, strict=True):
        assert row["events_per_second"] == expected.events_per_second
        assert row["running"] == expected.running
        assert row["completed_per_second"] == expected.completed_per_second
        assert row["failed_per_second"] == expected.failed_per_second
        assert row["duration_seconds"] == {"p50": expected.duration_p50,
                                           "p95": expected.duration_p95}
        assert row["queue_wait_seconds"] == {"p95": expected.wait_p95}
        oldest = row["oldest_running"]
        assert (oldest and oldest["task_id"]) == expected.oldest_task
        assert (oldest and oldest["age_seconds"]) == expected.oldest_age
    assert [(r["events"], r["failed"], r["success_ratio"]) for r in rows] == [
        (9, 1, 2 / 3),  # emails: COMPLETED, FAILED, COMPLETED
        (7, 1, 0.0),  # reports: CANCELLED, TIMEOUT
    ]


async def rebuilt(clock: Clock) -> LiveFigures:
    """The same figures made in one bulk load at the clock's time (sorted once)."""
    figures = live(Clock(clock.now))
    for event in fixture_events(T0):
        await figures.add(event)
    return figures


async def test_windows_slide_bucket_by_bucket() -> None:
    clock = Clock(T0.timestamp() + 16)
    figures = live(clock)
    figures.prepare()  # from here on samples are sorted as they come and go
    for event in fixture_events(T0):
        await figures.add(event)
    assert figures.queues("5m") == (await rebuilt(clock)).queues("5m")
    events = {w: {r["queue"]: r["events"] for r in figures.queues(w)} for w in ("5m", "1h")}
    assert events == {"5m": {"emails": 9, "reports": 7}, "1h": {"emails": 9, "reports": 7}}
    clock.now = T0.timestamp() + 302  # the bucket of 0-5 s left the 5 minutes
    assert {r["queue"]: r["events"] for r in figures.queues("5m")} == {"emails": 3, "reports": 5}
    later = await rebuilt(clock)
    assert [r["duration_seconds"] for r in figures.queues("5m")] == [
        r["duration_seconds"] for r in later.queues("5m")] == [
        {"p50": 1.0, "p95": 1.0}, {"p50": 10.0, "p95": 10.0}]
    clock.now = T0.timestamp() + 330
    assert {r["queue"]: r["events"] for r in figures.queues("5m")} == {"emails": 0, "reports": 0}
    assert {r["queue"]: r["events"] for r in figures.queues("1h")} == {"emails": 9, "reports": 7}
    assert figures.failure_counts("1h") == {
        "total": 2, "by_queue": {"emails": 1, "reports": 1},
        "by_error_type": {"ValueError": 1, "unknown": 1}}
    clock.now = T0.timestamp() + 3700
    assert figures.failure_counts("1h")["total"] == 0
    assert figures.failure_counts("24h")["total"] == 2
    clock.now = T0.timestamp() + 90_000  # a day later nothing is left, nor kept
    assert figures.failure_counts("24h")["total"] == 0
    assert figures._buckets == {}


async def test_series_give_sixty_points_per_window() -> None:
    clock = Clock(T0.timestamp() + 16)
    figures = live(clock)
    for event in fixture_events(T0):
        await figures.add(event)
    series = figures.series("5m")
    assert len(series["times"]) == 60 and series["step_seconds"] == 5.0
    assert series["times"][-1] == T0.timestamp() + 15  # the bucket of "now"
    assert sum(series["done_per_second"]["emails"]) * 5 == 2
    assert sum(series["failures"]["ValueError"]) == 1
    hour = figures.series("1h")["times"]  # points on whole minutes, the last one filling
    assert hour[-1] % 60 == 0 and hour[-1] <= clock.now < hour[-1] + 60
    assert figures.series("24h")["step_seconds"] == 1440.0


def test_task_lookup_by_unique_prefix() -> None:
    tasks = TaskLookup(max_tasks=3)
    for task_id in ("3f2a9c1e-aaaa", "3f2a9c1e-bbbb", "77777777-cccc"):
        tasks.add(task_id)
    assert tasks.matches("77777777") == ["77777777-cccc"]
    assert tasks.matches("3f2a9c1e") == ["3f2a9c1e-aaaa", "3f2a9c1e-bbbb"]
    assert tasks.matches("3f2a9c1e-b") == ["3f2a9c1e-bbbb"]
    assert tasks.matches("3f2") == ["3f2a9c1e-aaaa", "3f2a9c1e-bbbb"]
    assert tasks.matches("nope") == []
    tasks.add("99999999-dddd")  # the oldest is forgotten
    assert len(tasks) == 3 and tasks.matches("3f2a9c1e") == ["3f2a9c1e-bbbb"]


async def test_state_answers_failures_and_tasks() -> None:
    storage = MemoryBackend()
    events = [*fixture_events(T0), TaskEvent(task_id="task-b2", event_type="ENQUEUED",
                                              timestamp=T0, details={"queue_name": "emails"})]
    await storage.append(events)
    state = WebState(storage, clock=Clock(T0.timestamp() + 60))
    await state.follower.load(T0 - timedelta(hours=1))
    document = state.failures_document("1h", None, None, 10)
    assert [(f["task_id"], f["event_type"], f["error_type"]) for f in document["failures"]] == [
        ("task-c", "TIMEOUT", "unknown"), ("task-b", "FAILED", "ValueError")]
    assert document["failures"][1]["traceback"] == "Traceback ...\nValueError: bad address"
    only = state.failures_document("1h", "emails", "ValueError", 10)["failures"]
    assert [f["task_id"] for f in only] == ["task-b"]
    status, found = await state.task_document("task-b")
    assert status == 200 and found["task_id"] == "task-b"
    assert [(a["attempt"], a["status"], a["duration_seconds"]) for a in found["attempts"]] == [
        (1, "failed", 2.0), (2, "completed", 1.0)]
    assert [w["seconds"] for w in found["queue_waits"]] == [0.5, 1.0]
    status, running = await state.task_document("task-e")
    assert status == 200 and running["attempts"][0]["status"] == "running"
    assert running["attempts"][0]["duration_seconds"] == pytest.approx(49.0)
    status, several = await state.task_document("task-b")
    assert status == 200
    status, several = await state.task_document("task-")
    assert status == 300 and len(several["candidates"]) == 6
    assert (await state.task_document("zzz"))[0] == 404

