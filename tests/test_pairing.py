"""TaskPairing: every pairing rule, and the memory bound at a million open tasks."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from omniq_observe.pairing import Observation, TaskPairing
from omniq_observe.models.event import TaskEvent

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


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


def test_out_of_order_terminal_before_started_pairs_when_the_start_comes() -> None:
    p = TaskPairing()
    p.observe_now(ev("t", "ENQUEUED", 0, queue_name="q"))
    early = p.observe_now(ev("t", "COMPLETED", 5))
    assert early.closed is None
    late = p.observe_now(ev("t", "STARTED", 2))
    assert late.opened is False
    assert late.closed is not None
    assert (late.closed.duration, late.closed.status) == (3.0, "completed")
    assert late.closed.was_open is False
    assert late.queue_wait == 2.0


def test_enqueued_after_started_still_gives_the_queue_wait() -> None:
    p = TaskPairing()
    p.observe_now(ev("t", "STARTED", 4))
    assert p.observe_now(ev("t", "ENQUEUED", 1.5, queue_name="q")).queue_wait == 2.5


def test_a_duplicate_delivery_is_flagged_and_changes_nothing() -> None:
    p = TaskPairing()
    start = ev("t", "STARTED", 0, queue_name="q")
    assert p.observe_now(start).opened is True
    again = p.observe_now(start.__copy__())
    assert (again.duplicate, again.opened, again.queue) == (True, False, "q")
    end = ev("t", "COMPLETED", 2)
    assert p.observe_now(end).closed is not None
    assert p.observe_now(end).duplicate is True
    assert p.open_attempts == 0


async def test_after_a_restart_the_start_is_recovered_from_storage() -> None:
    enq = ev("t", "ENQUEUED", 0, queue_name="billing")
    start = ev("t", "STARTED", 1, worker_id="w9")
    end = ev("t", "COMPLETED", 4.5)
    p = TaskPairing(history_of(enq, start, end))  # a new process: it saw nothing before
    assert p.needs_history(end) is True
    obs = await p.observe(end)
    assert obs.closed is not None
    assert (obs.queue, obs.closed.duration, obs.closed.worker_id) == ("billing", 3.5, "w9")
    assert obs.closed.was_open is False  # it was never counted in progress here
    replay = p.observe_now(start)  # the STARTED delivered again later opens nothing
    assert (replay.opened, replay.closed, replay.duplicate) == (False, None, False)
    assert p.open_attempts == 0


def test_each_retry_is_its_own_attempt() -> None:
    p = TaskPairing()
    p.observe_now(ev("t", "ENQUEUED", 0, queue_name="q"))
    first = p.observe_now(ev("t", "STARTED", 1))
    failed = p.observe_now(ev("t", "FAILED", 3, error="ValueError: x"))
    p.observe_now(ev("t", "RETRIED", 4, attempt=2))
    second = p.observe_now(ev("t", "STARTED", 4.5))
    done = p.observe_now(ev("t", "COMPLETED", 5))
    assert failed.closed is not None and done.closed is not None
    assert (first.queue_wait, second.queue_wait) == (1.0, 0.5)
    assert (failed.closed.status, failed.closed.duration) == ("failed", 2.0)
    assert failed.closed.attempt == 1
    assert (done.closed.status, done.closed.duration, done.closed.attempt) == ("completed", 0.5, 2)


def test_retried_while_open_closes_the_attempt_as_retried() -> None:
    p = TaskPairing()
    p.observe_now(ev("t", "STARTED", 0, queue_name="q"))
    obs = p.observe_now(ev("t", "RETRIED", 2))
    assert obs.closed is not None
    assert (obs.closed.status, obs.closed.duration, obs.closed.was_open) == ("retried", 2.0, True)


def test_a_start_that_never_finishes_expires_after_the_ttl() -> None:
    p = TaskPairing(ttl=60)
    p.observe_now(ev("stuck", "STARTED", 0, queue_name="q"))
    assert p.expire((T0 + timedelta(seconds=59)).timestamp()) == []
    (gone,) = p.expire((T0 + timedelta(seconds=60 + 60 / 16 + 0.01)).timestamp())
    assert (gone.task_id, gone.status, gone.queue, gone.end, gone.was_open) == (
        "stuck", "expired", "q", None, True
    )
    assert (p.tracked_tasks, p.open_attempts) == (0, 0)


def test_expiry_runs_by_itself_as_event_time_passes() -> None:
    p = TaskPairing(ttl=10)
    p.observe_now(ev("stuck", "STARTED", 0, queue_name="q"))
    expired = []
    for i in range(1100):
        obs = p.observe_now(ev(f"other-{i}", "ENQUEUED", 100, queue_name="q"))
        expired += obs.expired
    assert [(a.task_id, a.status) for a in expired] == [("stuck", "expired")]


def test_a_terminal_whose_start_never_comes_expires_as_no_start() -> None:
    p = TaskPairing(ttl=10)
    p.observe_now(ev("t", "COMPLETED", 0, queue_name="q"))
    (gone,) = p.expire((T0 + timedelta(seconds=11)).timestamp())
    assert (gone.status, gone.queue) == ("no_start", "q")


def test_clock_skew_records_zero_and_flags_it() -> None:
    p = TaskPairing()
    p.observe_now(ev("t", "ENQUEUED", 5, queue_name="q"))
    start = p.observe_now(ev("t", "STARTED", 3))
    end = p.observe_now(ev("t", "COMPLETED", 1))
    assert (start.queue_wait, start.unpaired) == (0.0, ["clock_skew"])
    assert end.closed is not None
    assert (end.closed.duration, end.unpaired) == (0.0, ["clock_skew"])


def test_a_second_start_supersedes_an_unfinished_one() -> None:
    p = TaskPairing()
    p.observe_now(ev("t", "STARTED", 0, queue_name="q"))
    obs = p.observe_now(ev("t", "STARTED", 5))
    assert obs.unpaired == ["superseded"]
    assert [(a.status, a.attempt) for a in obs.expired] == [("expired", 1)]
    assert (obs.opened, obs.attempt) == (True, 2)


def test_finished_tasks_leave_no_state_behind() -> None:
    p = TaskPairing()
    for i in range(5000):
        p.observe_now(ev(f"t{i}", "ENQUEUED", i, queue_name="q"))
        p.observe_now(ev(f"t{i}", "STARTED", i + 0.5))
        p.observe_now(ev(f"t{i}", "COMPLETED", i + 0.75))
    assert (p.tracked_tasks, p.open_attempts) == (0, 0)


def _general_path(p: TaskPairing, event: TaskEvent) -> Observation:
    return p._observe(event, None, p._table.find(event.task_id))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_fast_path_gives_what_the_general_path_gives(seed: int) -> None:
    """Mixed traffic (retries, out of order, duplicates, skew, superseded starts, expiry):
    one pairing takes the fast path where it can, the other never does; every
    observation and the state left behind must be equal."""
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
    for i in rng.sample(range(len(events)), 60):  # some swapped with a neighbour
        events[i], events[i - 1] = events[i - 1], events[i]
    events += rng.sample(events, 50)  # duplicate deliveries
    events.append(ev("late", "STARTED", 40_000.0, queue_name="q0"))  # expires the rest
    fast, general = TaskPairing(ttl=600.0), TaskPairing(ttl=600.0)
    for event in events:
        assert fast.observe_now(event) == _general_path(general, event), event
    end = T0.timestamp() + 50_000.0
    assert fast.expire(end) == general.expire(end)
    assert (fast.tracked_tasks, fast.open_attempts, general.tracked_tasks) == (0, 0, 0)


def test_expiry_order_is_arrival_order_whichever_path_tracked_the_task() -> None:
    """The fast path keeps a newly enqueued task aside until the pairing settles; tasks the
    general path tracks (a STARTED without ENQUEUED) go to the table at once. Either way
    they expire in the order they came, as with the general path alone."""
    events: list[TaskEvent] = []
    for i in range(30):
        if i % 3 == 1:
            events.append(ev(f"t{i}", "STARTED", i, queue="q"))
        else:
            events += [ev(f"t{i}", "ENQUEUED", i, queue_name="q"), ev(f"t{i}", "STARTED", i + 0.5)]
    fast, general = TaskPairing(ttl=60.0), TaskPairing(ttl=60.0)
    for event in events:
        assert fast.observe_now(event) == _general_path(general, event)
    assert fast.tracked_tasks == general.tracked_tasks == 30
    end = T0.timestamp() + 1000.0
    expired = fast.expire(end)
    assert expired == general.expire(end)
    assert [a.task_id for a in expired] == [f"t{i}" for i in range(30)]


def test_a_held_end_closes_the_next_start_even_after_its_task_was_dropped() -> None:
    """Expiry can drop a task while its held terminal event stays held (it waits behind a
    later one); enqueued again, the task's next STARTED still pairs with it, on both paths."""
    fast, general = TaskPairing(ttl=10), TaskPairing(ttl=10)
    for event in (ev("a", "COMPLETED", 100, queue_name="q"), ev("t", "COMPLETED", 50)):
        assert fast.observe_now(event) == _general_path(general, event)
    now = T0.timestamp() + 80
    assert fast.expire(now) == general.expire(now) == []
    assert fast.tracked_tasks == general.tracked_tasks == 1  # "t" dropped, its end held
    for event in (ev("t", "ENQUEUED", 200, queue_name="q"), ev("t", "STARTED", 201)):
        obs = fast.observe_now(event)
        assert obs == _general_path(general, event)
    assert obs.closed is not None
    assert (obs.closed.status, obs.closed.end, obs.closed.was_open) == (
        "completed", T0.timestamp() + 50, False
    )


def test_a_million_open_tasks_fit_in_200_mb() -> None:
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
        PAGE = os.sysconf("SC_PAGE_SIZE")

        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * PAGE

        def trim():
            try:
                ctypes.CDLL(None).malloc_trim(0)
            except (OSError, AttributeError):
                pass  # not glibc: nothing to return

        event = TaskEvent(task_id="x", event_type="STARTED",
                          timestamp=datetime(2024, 1, 1, tzinfo=timezone.utc),
                          details={"queue_name": "emails", "worker_id": "w-1"})
        gc.collect()
        trim()
        before = rss()
        pairing = TaskPairing()
        observe = pairing.observe_now
        for i in range(N):
            event.task_id = "%08x-%04x-4%03x-8%03x-%012x" % (
                i, i & 0xFFFF, i & 0xFFF, (i * 7) & 0xFFF, (i * 2654435761) & 0xFFFFFFFFFFFF)
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
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    held, raw, peak = (int(x) for x in out.stdout.split())
    mib = 1024 * 1024
    figures = (f"a million open tasks: {held / mib:.1f} MiB held ({raw / mib:.1f} MiB raw RSS "
               f"growth, {peak / mib:.1f} MiB peak RSS of the process)")
    print(figures)
    assert held <= 200 * 1000 * 1000, figures  # 200 MB, the bound (190.7 MiB)


def test_bad_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl"):
        TaskPairing(ttl=0)
