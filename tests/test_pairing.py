"""TaskPairing: every pairing rule, and the memory bound at a million open tasks."""

from __future__ import annotations

import collections
import math
import random
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from omniq_observe.exceptions import ConfigurationError
from omniq_observe.models.event import TaskEvent
from omniq_observe.pairing import Observation, TaskPairing

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
NAN = float("nan")


def ev(task: str, kind: str, at: float, event_id: str | None = None, **details: Any) -> TaskEvent:
    extra = {"event_id": event_id} if event_id else {}
    return TaskEvent(
        task_id=task, event_type=kind, timestamp=T0 + timedelta(seconds=at), details=details,
        **extra,
    )


def history_of(*events: TaskEvent) -> Any:
    async def history(task_id: str) -> list[TaskEvent]:
        return [e for e in events if e.task_id == task_id]

    return history


def test_a_task_pairs_its_queue_wait_and_its_attempt() -> None:
    p = TaskPairing()
    enq = p.observe_now(ev("t", "ENQUEUED", 0, queue_name="emails"))
    start = p.observe_now(ev("t", "STARTED", 1.25, worker_id="w1"))
    end = p.observe_now(ev("t", "COMPLETED", 3.5))
    assert (enq.queue, enq.queue_wait, enq.opened) == ("emails", None, False)
    assert (start.queue, start.queue_wait, start.opened) == ("emails", 1.25, True)
    assert start.attempt == 1
    assert end.closed is not None
    assert (end.closed.status, end.closed.duration) == ("completed", 2.25)
    assert end.closed.queue == "emails"
    assert (end.closed.worker_id, end.closed.attempt, end.closed.was_open) == ("w1", 1, True)
    assert p.tracked_tasks == 0


def test_queue_rules_default_details_and_unknown() -> None:
    p = TaskPairing()
    assert p.observe_now(ev("a", "ENQUEUED", 0)).queue == "default"
    assert p.observe_now(ev("a", "STARTED", 1)).queue == "default"
    assert p.observe_now(ev("b", "STARTED", 0, queue="own")).queue == "own"
    assert p.observe_now(ev("c", "STARTED", 0)).queue == "unknown"


async def test_queue_comes_from_stored_history_when_the_enqueue_was_not_seen() -> None:
    enq = ev("t", "ENQUEUED", 0, queue_name="reports")
    start = ev("t", "STARTED", 1)
    p = TaskPairing(history_of(enq, start))
    assert p.needs_history(start) is True
    assert (await p.observe(start)).queue == "reports"


def take(p: TaskPairing, *events: TaskEvent, release: bool = True) -> list[Observation]:
    """Every observation the events give, released ones included (and, by default, what
    waited for the reorder window, as a processor that caught up decides it)."""
    out: list[Observation] = []
    for event in events:
        out += p.observe_now(event).all()
    if release:
        out += p.release(float("inf"))
    return out


def closed(observations: list[Observation]) -> list[tuple[str, float, bool]]:
    return [(o.closed.status, o.closed.duration, o.closed.was_open)
            for o in observations if o.closed is not None]


def waits(observations: list[Observation]) -> list[float]:
    return [o.queue_wait for o in observations if o.queue_wait is not None]


def test_out_of_order_terminal_before_started_pairs_when_the_start_comes() -> None:
    p = TaskPairing()
    early = take(p, ev("t", "ENQUEUED", 0, queue_name="q"), ev("t", "COMPLETED", 5),
                 release=False)
    assert closed(early) == []  # held: its STARTED may still come
    late = take(p, ev("t", "STARTED", 2))
    assert closed(late) == [("completed", 3.0, False)]
    assert waits(late) == [2.0]
    assert sum(o.waiting for o in early + late) == 0
    assert p.tracked_tasks == 0


def test_enqueued_after_started_still_gives_the_queue_wait() -> None:
    p = TaskPairing()
    p.observe_now(ev("t", "STARTED", 4, queue="q"))
    assert waits(take(p, ev("t", "ENQUEUED", 1.5, queue_name="q"))) == [2.5]


def test_retried_while_open_closes_the_attempt_as_retried_once_the_window_passed() -> None:
    p = TaskPairing(reorder_window=10)
    p.observe_now(ev("t", "STARTED", 0, queue_name="q"))
    held = p.observe_now(ev("t", "RETRIED", 2))
    assert closed(held.all()) == []  # its FAILED may still come
    later = p.observe_now(ev("other", "ENQUEUED", 12.5, queue_name="q"))
    assert closed(later.all()) == [("retried", 2.0, True)]


def test_a_failed_arriving_after_its_retried_within_the_window_ends_the_attempt() -> None:
    p = TaskPairing(reorder_window=10)
    seen = take(p, ev("t", "ENQUEUED", 0, queue_name="q"), ev("t", "STARTED", 1, attempt=1),
                ev("t", "RETRIED", 3, attempt=2), ev("t", "FAILED", 2.5, error="E: x"),
                ev("t", "STARTED", 4, attempt=2), ev("t", "COMPLETED", 5, attempt=2))
    assert sorted(closed(seen)) == [("completed", 1.0, True), ("failed", 1.5, True)]
    assert sorted(waits(seen)) == [1.0, 1.0]
    assert [r for o in seen for r in o.unpaired] == []


def test_later_than_the_window_counts_late_and_changes_nothing() -> None:
    p = TaskPairing(reorder_window=1)
    seen = take(p, ev("t", "ENQUEUED", 0, queue_name="q"), ev("t", "STARTED", 1),
                ev("t", "RETRIED", 3), ev("x", "ENQUEUED", 10, queue_name="q"), release=False)
    assert closed(seen) == [("retried", 2.0, True)]
    late = p.observe_now(ev("t", "FAILED", 2.5, error="E: x"))
    assert (late.counted, late.unpaired, late.closed) == (True, ["late"], None)


def test_eta_starts_the_queue_wait_and_the_waiting_count() -> None:
    p = TaskPairing()
    due = (T0 + timedelta(seconds=30)).isoformat()
    seen = take(p, ev("t", "ENQUEUED", 0, queue_name="q", eta=due), ev("t", "STARTED", 31),
                ev("t", "FAILED", 32), ev("t", "RETRIED", 32, eta=(T0 + timedelta(seconds=40))
                                          .isoformat()),
                ev("t", "STARTED", 45), ev("t", "COMPLETED", 46))
    assert waits(seen) == [1.0, 5.0]
    assert [o.waiting for o in seen] == [1, -1, 0, 1, -1, 0]


def test_a_task_cancelled_while_queued_ends_quietly_without_reading_storage() -> None:
    reads: list[str] = []

    async def history(task_id: str) -> list[TaskEvent]:
        reads.append(task_id)
        return []

    p = TaskPairing(history)
    seen = take(p, ev("t", "ENQUEUED", 0, queue_name="q"), ev("t", "CANCELLED", 3))
    assert p.needs_history(ev("t2", "CANCELLED", 4)) is True  # (a task not tracked would)
    assert reads == []
    assert [(o.event.event_type, o.counted) for o in seen if o.counted] == [
        ("ENQUEUED", True), ("CANCELLED", True)]
    assert [r for o in seen for r in o.unpaired] == [] and not any(o.expired for o in seen)
    assert sum(o.waiting for o in seen) == 0
    assert p.tracked_tasks == 0


def test_a_start_that_never_finishes_expires_after_the_ttl() -> None:
    p = TaskPairing(ttl=60)
    p.observe_now(ev("stuck", "STARTED", 0, queue_name="q"))
    assert p.expire((T0 + timedelta(seconds=59)).timestamp()) == []
    (obs,) = p.expire((T0 + timedelta(seconds=60 + 60 / 16 + 0.01)).timestamp())
    (gone,) = obs.expired
    assert (gone.task_id, gone.status, gone.queue, gone.end, gone.was_open) == (
        "stuck", "expired", "q", None, True
    )
    assert obs.counted is False
    assert (p.tracked_tasks, p.open_attempts) == (0, 0)


def test_expiry_runs_by_itself_as_event_time_passes() -> None:
    p = TaskPairing(ttl=10)
    p.observe_now(ev("stuck", "STARTED", 0, queue_name="q"))
    queued = p.observe_now(ev("queued", "ENQUEUED", 0, queue_name="q"))
    expired, waiting = [], queued.waiting
    for i in range(1100):
        for obs in p.observe_now(ev(f"other-{i}", "ENQUEUED", 100, queue_name="q")).all():
            expired += obs.expired
            waiting += obs.waiting
    assert [(a.task_id, a.status) for a in expired] == [("stuck", "expired")]
    assert waiting == 1100  # the queued task left the waiting count


def test_a_terminal_whose_start_never_comes_is_no_start_after_the_window() -> None:
    p = TaskPairing(ttl=10)
    seen = take(p, ev("t", "COMPLETED", 0, queue_name="q"))
    (gone,) = [a for o in seen for a in o.expired]
    assert (gone.status, gone.queue, gone.start) == ("no_start", "q", None)


def test_clock_skew_records_zero_and_flags_it() -> None:
    p = TaskPairing()
    seen = take(p, ev("t", "ENQUEUED", 5, queue_name="q"), ev("t", "STARTED", 6),
                ev("t", "COMPLETED", 1))
    assert closed(seen) == [("completed", 0.0, True)]
    assert [r for o in seen for r in o.unpaired] == ["clock_skew"]


def test_a_second_start_supersedes_an_unfinished_one() -> None:
    p = TaskPairing()
    seen = take(p, ev("t", "STARTED", 0, queue_name="q"), ev("t", "STARTED", 5))
    (obs,) = [o for o in seen if o.unpaired]
    assert obs.unpaired == ["superseded"]
    assert [(a.status, a.attempt) for a in obs.expired] == [("expired", 1)]
    assert sum(o.opened for o in seen) == 2


def test_finished_tasks_leave_no_state_behind() -> None:
    p = TaskPairing()
    for i in range(5000):
        p.observe_now(ev(f"t{i}", "ENQUEUED", i, queue_name="q"))
        p.observe_now(ev(f"t{i}", "STARTED", i + 0.5))
        p.observe_now(ev(f"t{i}", "COMPLETED", i + 0.75))
    assert (p.tracked_tasks, p.open_attempts) == (0, 0)


def _general_path(p: TaskPairing, event: TaskEvent) -> list[Observation]:
    if p._unsettled:
        p._settle()
    return p._observe(event, None, p._table.find(event.task_id)).all()


def tally(observations: list[Observation]) -> dict[str, Any]:
    """What the handlers make of observations: counts, sums, gauges, reasons."""
    out: dict[str, Any] = collections.Counter()
    for o in observations:
        if o.duplicate:
            out["duplicate"] += 1
            continue
        if o.counted:
            out[("event", o.event.event_type, o.queue)] += 1
        if o.queue_wait is not None:
            out[("wait", o.queue)] += 1
            out[("wait_sum", o.queue)] += round(o.queue_wait, 6)
        out[("waiting", o.queue)] += o.waiting
        out[("open", o.queue)] += o.opened
        if o.closed is not None:
            c = o.closed
            out[("attempt", c.queue, c.status, c.attempt, c.worker_id)] += 1
            out[("duration", c.queue, c.status)] += round(c.duration, 6)
            out[("open", c.queue)] -= c.was_open
        for a in o.expired:
            out[("expired", a.queue, a.status)] += 1
            out[("open", a.queue)] -= a.was_open
        for reason in o.unpaired:
            out[("unpaired", reason)] += 1
    return {k: round(v, 6) for k, v in out.items() if v}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fast_path_gives_what_the_general_path_gives(seed: int) -> None:
    """Mixed traffic (retries, duplicates, skew, superseded starts, tasks without a queue,
    expiry): one pairing takes the fast path where it can, the other never does; what the
    observations add up to (as a handler records them) must be equal. (Arrival orders
    other than this one leave the fast path: tests/test_pairing_order.py covers them.)"""
    rng = random.Random(seed)
    events: list[TaskEvent] = []
    for task in range(400):
        tid, at = f"t{task}", task * 7.0
        story = [("ENQUEUED", {"queue_name": f"q{task % 3}"} if task % 11 else {}),
                 ("STARTED", {"worker_id": f"w{task % 4}"})]
        if task % 4 == 1:
            story += [("FAILED", {"error": "KeyError: x"}), ("RETRIED", {"attempt": 2}),
                      ("STARTED", {"worker_id": "w9", "attempt": 2})]
        if task % 9 == 2:
            story += [("STARTED", {})]  # supersedes the open attempt
        story += [(rng.choice(["COMPLETED", "COMPLETED", "TIMEOUT", "CANCELLED"]), {})]
        for step, (kind, details) in enumerate(story):
            skew = -3.0 if task % 13 == 5 and step == 1 else 0.0
            events.append(ev(tid, kind, at + step * 0.5 + skew, **details))
    events += rng.sample(events, 50)  # duplicate deliveries
    events.append(ev("late", "STARTED", 40_000.0, queue_name="q0"))  # expires the rest
    fast, general = TaskPairing(ttl=600.0), TaskPairing(ttl=600.0)
    got_fast: list[Observation] = []
    got_general: list[Observation] = []
    for event in events:
        got_fast += fast.observe_now(event).all()
        got_general += _general_path(general, event)
    end = T0.timestamp() + 50_000.0
    got_fast += fast.release(end) + fast.expire(end)
    got_general += general.release(end) + general.expire(end)
    assert tally(got_fast) == tally(got_general)
    assert tally(got_fast)[("event", "COMPLETED", "q1")] > 0
    assert (fast.tracked_tasks, fast.open_attempts, general.tracked_tasks) == (0, 0, 0)


@pytest.mark.parametrize(("traced", "bound"), [(False, 200), (True, 250)],
                         ids=["pairing", "with-trace-contexts"])
def test_a_million_open_tasks_fit_in_200_mb(traced: bool, bound: int) -> None:
    """A fresh process measures its resident memory (/proc/self/statm) before and after a
    pairing takes STARTED events of a million tasks. Task ids are UUID-shaped strings (36
    characters, the usual task id), counted too since the pairing keeps them; one event
    object is reused, so no event is retained. Asserted: the memory held, i.e. the growth
    once the allocator has returned its free pages (glibc ``malloc_trim``); the raw growth
    (free but not yet returned pages included) and the peak are printed too."""
    script = textwrap.dedent(
        """
        import ctypes, gc, os, resource
        from datetime import datetime, timezone
        from omniq_observe.pairing import TaskPairing
        from omniq_observe.models.event import TaskEvent

        N = 1_000_000
        TRACED = __TRACED__
        PAGE = os.sysconf("SC_PAGE_SIZE")

        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * PAGE

        def trim():
            try:
                ctypes.CDLL(None).malloc_trim(0)
            except (OSError, AttributeError):
                pass  # not glibc: nothing to return

        when = datetime(2024, 1, 1, tzinfo=timezone.utc)
        enqueued = TaskEvent(task_id="x", event_type="ENQUEUED", timestamp=when,
                             details={"queue_name": "emails"})
        event = TaskEvent(task_id="x", event_type="STARTED", timestamp=when,
                          details={"queue_name": "emails", "worker_id": "w-1"})
        gc.collect()
        trim()
        before = rss()
        pairing = TaskPairing(keep_context=TRACED)
        observe = pairing.observe_now
        for i in range(N):
            event.task_id = "%08x-%04x-4%03x-8%03x-%012x" % (
                i, i & 0xFFFF, i & 0xFFF, (i * 7) & 0xFFF, (i * 2654435761) & 0xFFFFFFFFFFFF)
            if TRACED:
                enqueued.task_id = event.task_id
                enqueued.event_id = "%08x-0000-7000-9000-%012x" % (i, i)
                enqueued.trace_context = {
                    "traceparent": "00-%032x-%016x-01" % (i * 7919 + 1, i * 104729 + 1)}
                observe(enqueued)
            event.event_id = "%08x-0000-7000-8000-%012x" % (i, i)
            observe(event)
        event.event_id = event.task_id = "done"
        assert pairing.open_attempts == N, pairing.open_attempts
        gc.collect()
        raw = rss() - before
        trim()
        held = rss() - before
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(held, raw, peak)
        """
    ).replace("__TRACED__", str(traced))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    held, raw, peak = (int(x) for x in out.stdout.split())
    mib = 1024 * 1024
    kind = " with trace contexts" if traced else ""
    figures = (f"a million open tasks{kind}: {held / mib:.1f} MiB held "
               f"({raw / mib:.1f} MiB raw RSS growth, {peak / mib:.1f} MiB peak RSS)")
    print(figures)
    assert held <= bound * 1000 * 1000, figures  # 200 MB (190.7 MiB); 250 B a task traced


@pytest.mark.parametrize(("setting", "bad", "wanted"), [
    *[("ttl", bad, "a positive number of seconds") for bad in (True, NAN, 0, -1)],
    *[("reorder_window", bad, "a finite number of seconds >= 0")
      for bad in (True, NAN, -1, math.inf)],
    *[("dedupe_window", bad, "a non-negative integer") for bad in (True, NAN, -1, 0.5)],
])
def test_bad_settings_are_refused_with_their_value(setting: str, bad: object, wanted: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        TaskPairing(**{setting: bad})  # type: ignore[arg-type]
    assert str(info.value) == f"{setting} must be {wanted}, got {bad!r}"
    assert (info.value.setting, info.value.value) == (setting, bad)
    assert isinstance(info.value, ValueError)  # what TaskPairing raised before


def test_settings_at_their_bounds_are_taken() -> None:
    pairing = TaskPairing(ttl=math.inf, reorder_window=0, dedupe_window=0)
    assert (pairing.ttl, pairing.reorder_window, pairing.dedupe_window) == (math.inf, 0.0, 0)


async def test_leaving_the_fast_path_keeps_the_waiting_count_on_the_retried() -> None:
    """A task paired in order (its RETRIED counted waiting) meets an attempt out of order:
    its stored history takes over, and the RETRIED is still the entry that stops waiting."""
    stored = [ev("t", "ENQUEUED", 0, queue_name="q"), ev("t", "STARTED", 1, attempt=1),
              ev("t", "FAILED", 2), ev("t", "RETRIED", 2.5, attempt=2),
              ev("t", "STARTED", 9, attempt=3), ev("t", "COMPLETED", 10, attempt=3),
              ev("t", "STARTED", 4, attempt=2), ev("t", "RETRIED", 6, attempt=3)]
    p = TaskPairing(history_of(*stored))
    seen: list[Observation] = []
    for event in stored:
        seen += (await p.observe(event)).all()
    seen += p.release(float("inf"))
    assert sum(o.waiting for o in seen) == 0
    assert sorted(waits(seen)) == [1.0, 1.5, 3.0]
    assert sorted(closed(seen)) == [("completed", 1.0, False), ("failed", 1.0, True),
                                    ("retried", 2.0, False)]
