"""TaskTable: the key table against a plain dict, through growth, shrinking and collisions."""

from __future__ import annotations

import random

import pytest

from omniq_observe.pairing._table import TaskTable


def check(table: TaskTable, model: dict[str, int], gone: set[str]) -> None:
    assert len(table) == len(model)
    for task_id, slot in model.items():
        assert table.find(task_id) == slot
        assert table.ids[slot] == task_id
    for task_id in gone:
        assert table.find(task_id) == -1
    assert sorted(table.live_slots()) == sorted(model.values())
    assert table.keys.count(None) > len(table.keys) // 2 - 1  # at most half full


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_adds_and_removes_match_a_dict(seed: int) -> None:
    """Random adds and removes (in bursts, so the key table grows and shrinks), with short
    ids that collide often: every live id is found at its slot, no removed one is."""
    rng = random.Random(seed)
    table = TaskTable(60.0)
    model: dict[str, int] = {}
    gone: set[str] = set()
    for burst in range(40):
        adding = burst % 3 != 2
        for _ in range(rng.randrange(1, 300)):
            if adding or not model:
                task_id = f"t{rng.randrange(5000)}"
                if task_id in model:
                    continue
                probe = -1 if rng.random() < 0.5 else -7  # with or without a probe
                model[task_id] = table.add(task_id, 1000.0 + burst, probe)
                gone.discard(task_id)
            else:
                task_id = rng.choice(sorted(model))
                table.remove(model.pop(task_id))
                gone.add(task_id)
        check(table, model, gone)
    for task_id in sorted(model):
        table.remove(model.pop(task_id))
        gone.add(task_id)
    check(table, model, gone)
    assert len(table.keys) == 8  # shrunk back to its least size


def test_remove_with_the_probe_of_its_key() -> None:
    table = TaskTable(60.0)
    keys = [f"task-{i}" for i in range(50)]
    slots = {task_id: table.add(task_id, 5.0) for task_id in keys}
    for task_id in keys[::2]:
        probe = table.keys.index(task_id)
        table.remove(slots.pop(task_id), probe)
    assert {task_id: table.find(task_id) for task_id in keys} == {
        task_id: slots.get(task_id, -1) for task_id in keys
    }


def test_due_yields_idle_slots_and_skips_freed_and_reused_ones() -> None:
    table = TaskTable(10.0)
    idle = table.add("idle", 5.0)
    touched = table.add("touched", 5.0)
    table.t_touch[touched] = 95.0
    freed = table.add("freed", 5.0)
    table.remove(freed)
    reused = table.add("reused", 50.0)  # takes the freed slot, in a later bucket
    assert reused == freed
    assert list(table.due(40.0)) == [idle]  # "touched" moved on to its touch's bucket
    table.remove(idle)
    assert list(table.due(1000.0)) == [reused, touched]  # by bucket: 50 s, then 95 s


def test_the_fast_path_reads_and_writes_a_slot_as_fields() -> None:
    table = TaskTable(60.0)
    table.keep_contexts()
    slot = table.add("a", 10.0)
    table.queue[slot], table.t_enq[slot], table.attempt[slot] = 3, 9.5, 1
    table.set_context(slot, (7, 8, 1))
    probe = table.locate("a")
    assert table.keys[probe] == "a" and table.slots[probe] == slot
    assert table.locate("b") == -1
    touch, queue, enq, start, touch2, attempt, worker, context = table.row(slot)
    assert (touch, queue, enq, touch2, attempt, worker, context) == (10.0, 3, 9.5, 10.0, 1, 0,
                                                                     (7, 8, 1))
    assert start != start  # not started: NaN
    table.update(slot, probe, (0.0, 5, float("nan"), 11.0, 11.0, 2, 4, None))
    assert (table.queue[slot], table.t_start[slot], table.t_touch[slot]) == (3, 11.0, 11.0)
    assert (table.attempt[slot], table.worker[slot], table.context(slot)) == (2, 4, (7, 8, 1))
    table.update(slot, probe, None)
    assert (table.find("a"), len(table)) == (-1, 0)
