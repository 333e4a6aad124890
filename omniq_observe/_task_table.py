"""Compact per-task state for :mod:`omniq_observe._pairing`: no Python object per task.

A plain ``dict[str, int]`` costs ~70 bytes per task before any state (its entry plus one
``int`` object per slot index). :class:`TaskTable` keeps the task ids in an open-addressing
table (a list of keys and an ``array`` of dense slot numbers) and the state in typed arrays
indexed by slot, so an open task costs its id string plus ~75 bytes.

Expiry uses time buckets of slot numbers tagged with the slot's generation: a freed slot's
entries go stale (generation mismatch) instead of keeping the finished task's id alive.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator

__all__ = ["NAN", "U64", "TaskTable"]

NAN = math.nan
U64 = _U64 = 0xFFFFFFFFFFFFFFFF  # task-id hashes probe as unsigned, like CPython's dict
_DELETED = object()  # a tombstone in the key table: equal to no task id
_MIN_CAPACITY = 8


class TaskTable:
    """Maps task ids to dense slots holding typed per-task state.

    Lookups probe :attr:`keys` (task ids; ``None`` = empty) from ``hash(id) & U64 & mask``
    as :meth:`find` does; :attr:`slots` holds the slot of the key at the same position.
    State per slot: ``t_enq``, ``t_start``, ``t_touch`` (epoch seconds, NaN when unset),
    ``attempt``, ``queue`` and ``worker`` (interned name numbers, 0 = none).

    Args:
        bucket_width: seconds of event time per expiry bucket.
    """

    __slots__ = (
        "_buckets",
        "_filled",
        "_free",
        "_gen",
        "_last_bucket",
        "_last_entries",
        "attempt",
        "bucket_width",
        "ids",
        "keys",
        "mask",
        "queue",
        "slots",
        "t_enq",
        "t_start",
        "t_touch",
        "used",
        "worker",
    )

    def __init__(self, bucket_width: float) -> None:
        self.bucket_width = bucket_width
        self.keys: list[object] = [None] * _MIN_CAPACITY
        self.slots = array("i", bytes(4 * _MIN_CAPACITY))
        self.mask = _MIN_CAPACITY - 1
        self.used = 0  # live keys
        self._filled = 0  # live keys and tombstones
        self.ids: list[str | None] = []
        self._free = array("i")
        self._gen = array("I")
        self.t_enq = array("d")
        self.t_start = array("d")
        self.t_touch = array("d")
        self.attempt = array("H")
        self.queue = array("H")
        self.worker = array("H")
        self._buckets: dict[int, array[int]] = {}
        self._last_bucket: int | None = None  # the bucket _place used last, and its entries
        self._last_entries = array("q")

    def __len__(self) -> int:
        return self.used

    def find(self, task_id: str) -> int:
        """Return the slot of ``task_id``, or -1."""
        keys, mask = self.keys, self.mask
        perturb = h = hash(task_id) & _U64
        i = h & mask
        while True:
            key = keys[i]
            if key is None:
                return -1
            if key == task_id:
                return self.slots[i]
            perturb >>= 5
            i = (i * 5 + perturb + 1) & mask

    def add(self, task_id: str, ts: float, position: int = -1) -> int:
        """Give ``task_id`` (not present) a fresh slot touched at ``ts``; return the slot.

        ``position``: where a :meth:`find` probe for ``task_id`` just ended (an empty key
        position, nothing changed since); saves probing again.
        """
        free = self._free
        if free:
            slot = free.pop()
            self.ids[slot] = task_id
            self.t_enq[slot] = self.t_start[slot] = NAN
            self.t_touch[slot] = ts
            self.attempt[slot] = self.queue[slot] = self.worker[slot] = 0
        else:
            slot = len(self.ids)
            self.ids.append(task_id)
            self._gen.append(0)
            self.t_enq.append(NAN)
            self.t_start.append(NAN)
            self.t_touch.append(ts)
            self.attempt.append(0)
            self.queue.append(0)
            self.worker.append(0)
        self._insert_key(task_id, slot, position)
        number = int(ts // self.bucket_width) if ts - ts == 0.0 else 0  # finite: its bucket
        if number == self._last_bucket:  # events come in time order: mostly the same one
            self._last_entries.append(slot | (self._gen[slot] << 32))
        else:
            self._place(slot, ts)
        return slot

    def remove(self, slot: int, position: int = -1) -> None:
        """Free ``slot`` and forget its task id; ``position``: where its key is in
        :attr:`keys`, when the caller knows (saves probing again)."""
        task_id = self.ids[slot]
        if task_id is None:
            return
        keys, mask = self.keys, self.mask
        if position >= 0 and keys[position] is task_id:
            keys[position] = _DELETED
            self.used -= 1
            self._release(slot)
            return
        perturb = h = hash(task_id) & _U64
        i = h & mask
        while True:
            key = keys[i]
            if key is None:
                break
            if key == task_id:
                keys[i] = _DELETED
                self.used -= 1
                break
            perturb >>= 5
            i = (i * 5 + perturb + 1) & mask
        self._release(slot)

    def _release(self, slot: int) -> None:
        self.ids[slot] = None
        self._gen[slot] = (self._gen[slot] + 1) & 0x7FFFFFFF
        self._free.append(slot)

    def live_slots(self) -> Iterator[int]:
        """Every slot in use."""
        return (slot for slot, task_id in enumerate(self.ids) if task_id is not None)

    def due(self, cutoff: float) -> Iterator[int]:
        """Yield live slots whose bucket ended by ``cutoff`` and whose last touch is at or
        before it; slots touched later are moved to their touch's bucket."""
        width = self.bucket_width
        last = math.floor(cutoff / width) - 1  # buckets that end at or before cutoff
        self._last_bucket = None  # it may be popped below
        for number in sorted(n for n in self._buckets if n <= last):
            entries = self._buckets.pop(number)
            gen, ids, touch = self._gen, self.ids, self.t_touch
            for entry in entries:
                slot = entry & 0xFFFFFFFF
                if ids[slot] is None or gen[slot] != entry >> 32:
                    continue  # freed or reused since it was placed
                if touch[slot] <= cutoff:
                    yield slot
                else:
                    self._place(slot, touch[slot])
        self._last_bucket = None

    # -- internals ----------------------------------------------------------------------
    def _place(self, slot: int, ts: float) -> None:
        number = int(ts // self.bucket_width) if ts - ts == 0.0 else 0
        bucket = self._buckets.get(number)
        if bucket is None:
            bucket = self._buckets[number] = array("q")
        bucket.append(slot | (self._gen[slot] << 32))
        self._last_bucket, self._last_entries = number, bucket

    def _insert_key(self, task_id: str, slot: int, position: int = -1) -> None:
        keys, mask = self.keys, self.mask
        if position >= 0 and keys[position] is None:
            i = position
            self._filled += 1
        else:
            perturb = h = hash(task_id) & _U64
            i = h & mask
            while True:
                key = keys[i]
                if key is None:
                    self._filled += 1
                    break
                if key is _DELETED:
                    break
                perturb >>= 5
                i = (i * 5 + perturb + 1) & mask
        keys[i] = task_id
        self.slots[i] = slot
        self.used += 1
        if self._filled * 3 >= (mask + 1) * 2:
            self._resize()

    def _resize(self) -> None:
        capacity = _MIN_CAPACITY
        while capacity < self.used * 2 + 2:
            capacity *= 2
        old_keys, old_index = self.keys, self.slots
        self.keys = [None] * capacity
        self.slots = array("i", bytes(4 * capacity))
        self.mask = capacity - 1
        self._filled = self.used = 0
        keys, index, mask = self.keys, self.slots, self.mask
        for position, key in enumerate(old_keys):
            if key is None or key is _DELETED:
                continue
            perturb = h = hash(key) & _U64
            i = h & mask
            while keys[i] is not None:
                perturb >>= 5
                i = (i * 5 + perturb + 1) & mask
            keys[i] = key
            index[i] = old_index[position]
            self._filled += 1
        self.used = self._filled
