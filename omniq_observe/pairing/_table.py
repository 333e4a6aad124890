"""Compact per-task state for :mod:`omniq_observe.pairing`: no Python object per task.

A plain ``dict[str, int]`` costs ~70 bytes per task before any state (its entry plus one
``int`` object per slot index). :class:`TaskTable` keeps the task ids in an open-addressing
table (a list of keys and an ``array`` of dense slot numbers) and the state in typed arrays
indexed by slot, so an open task costs its id string plus ~75 bytes.

The key table probes linearly and deletes by shifting the entries after a removed key back
(no tombstones): tasks come and go all the time, and tombstones would force a rebuild of the
key table every few hundred tasks.

Expiry uses time buckets of slot numbers tagged with the slot's generation: a freed slot's
entries go stale (generation mismatch) instead of keeping the finished task's id alive.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator

__all__ = ["NAN", "Fields", "TaskTable"]

NAN = math.nan
# One task's state as the fast path of pairing handles it: when it was added (or last
# touched, for a task in the table), its queue (an interned name id), t_enq, t_start,
# t_touch, attempt, worker (interned) and the ENQUEUED's trace context when kept.
Fields = tuple[float, int, float, float, float, int, int, "tuple[int, int, int] | None"]
_MIN_CAPACITY = 8


class TaskTable:
    """Maps task ids to dense slots holding typed per-task state.

    Lookups probe :attr:`keys` (task ids; ``None`` = empty) from ``hash(id) & mask`` on,
    one index at a time, as :meth:`find` does; such an index into :attr:`keys` is called a
    *probe*, and :attr:`slots` holds the slot of the key at the same probe. State per
    slot: ``t_enq``, ``t_start``, ``t_touch`` (epoch seconds, NaN when unset),
    ``attempt``, ``queue`` and ``worker`` (interned name ids, 0 = none); after
    :meth:`keep_contexts`, a trace context too (``ctx_hi``/``ctx_lo``: the trace id's
    halves, ``ctx_span``, ``ctx_flags``; 25 bytes, all 0 = none).

    Args:
        bucket_width: seconds of event time per expiry bucket.
    """

    __slots__ = (
        "_buckets",
        "_free",
        "_gen",
        "_grow_at",
        "_last_bucket",
        "_last_entries",
        "_shrink_below",
        "attempt",
        "bucket_width",
        "ctx_flags",
        "ctx_hi",
        "ctx_lo",
        "ctx_span",
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
        self.keys: list[str | None] = [None] * _MIN_CAPACITY
        self.slots = array("i", bytes(4 * _MIN_CAPACITY))
        self.mask = _MIN_CAPACITY - 1
        self.used = 0  # live keys
        self._grow_at = _MIN_CAPACITY // 2  # this many live keys: double the key table
        self._shrink_below = 0  # fewer live keys than this: halve the key table
        self.ids: list[str | None] = []
        self._free = array("i")
        self._gen = array("I")
        self.t_enq = array("d")
        self.t_start = array("d")
        self.t_touch = array("d")
        self.attempt = array("H")
        self.queue = array("H")
        self.worker = array("H")
        self.ctx_hi: array[int] | None = None
        self.ctx_lo: array[int] | None = None
        self.ctx_span: array[int] | None = None
        self.ctx_flags: array[int] | None = None
        self._buckets: dict[int, array[int]] = {}
        # The bucket _place used last (as the float ts // bucket_width), and its entries.
        self._last_bucket = NAN
        self._last_entries = array("q")

    def __len__(self) -> int:
        return self.used

    def keep_contexts(self) -> None:
        """Give every slot a trace context (all zero: none) from now on."""
        if self.ctx_hi is None:
            size = len(self.ids)
            self.ctx_hi, self.ctx_lo = array("Q", bytes(8 * size)), array("Q", bytes(8 * size))
            self.ctx_span, self.ctx_flags = array("Q", bytes(8 * size)), array("B", bytes(size))

    def set_context(self, slot: int, context: tuple[int, int, int] | None) -> None:
        """Store ``slot``'s trace context (None: none); contexts must be kept."""
        if self.ctx_hi is None or self.ctx_lo is None or self.ctx_span is None:
            return
        assert self.ctx_flags is not None
        trace_id, span_id, flags = context or (0, 0, 0)
        self.ctx_hi[slot], self.ctx_lo[slot] = trace_id >> 64, trace_id & 0xFFFFFFFFFFFFFFFF
        self.ctx_span[slot], self.ctx_flags[slot] = span_id, flags & 0xFF

    def context(self, slot: int) -> tuple[int, int, int] | None:
        """``slot``'s trace context, or None."""
        if self.ctx_hi is None or self.ctx_lo is None or self.ctx_span is None:
            return None
        assert self.ctx_flags is not None
        span_id = self.ctx_span[slot]
        if not span_id:
            return None
        return (self.ctx_hi[slot] << 64) | self.ctx_lo[slot], span_id, self.ctx_flags[slot]

    def find(self, task_id: str) -> int:
        """Return the slot of ``task_id``, or -1."""
        probe = self.locate(task_id)
        return self.slots[probe] if probe >= 0 else -1

    def locate(self, task_id: str) -> int:
        """Return the probe where ``task_id`` sits in :attr:`keys`, or -1."""
        keys, mask = self.keys, self.mask
        probe = hash(task_id) & mask
        while True:
            key = keys[probe]
            if key is None:
                return -1
            if key == task_id:
                return probe
            probe = (probe + 1) & mask

    def row(self, slot: int) -> Fields:
        """``slot``'s state as the fast path reads it: (last touch, queue, ``t_enq``,
        ``t_start``, ``t_touch``, attempt, worker, trace context)."""
        touch = self.t_touch[slot]
        context = self.context(slot) if self.ctx_span is not None else None
        return (touch, self.queue[slot], self.t_enq[slot], self.t_start[slot], touch,
                self.attempt[slot], self.worker[slot], context)

    def update(self, slot: int, probe: int, fields: Fields | None) -> None:
        """Store what the fast path made of ``slot`` (its queue and trace context stay);
        ``None``: the task ended, free the slot (``probe``: its key's, see
        :meth:`remove`)."""
        if fields is None:
            self.remove(slot, probe)
            return
        _added, _queue, enq, start, touch, attempt, worker, _context = fields
        self.t_enq[slot] = enq
        self.t_start[slot] = start
        self.t_touch[slot] = touch
        self.attempt[slot] = attempt
        self.worker[slot] = worker

    def add(self, task_id: str, ts: float, probe: int = -1) -> int:
        """Give ``task_id`` (not present) a fresh slot touched at ``ts``; return the slot.

        ``probe``: where a :meth:`locate` for ``task_id`` just ended (an empty one,
        nothing changed since); saves probing again.
        """
        free = self._free
        if free:
            slot = free.pop()
            self.ids[slot] = task_id
            self.t_enq[slot] = self.t_start[slot] = NAN
            self.t_touch[slot] = ts
            self.attempt[slot] = self.queue[slot] = self.worker[slot] = 0
            if self.ctx_span is not None:
                self.ctx_span[slot] = 0
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
            if self.ctx_hi is not None:
                self._grow_contexts()
        keys = self.keys
        if probe < 0 or keys[probe] is not None:
            mask = self.mask
            probe = hash(task_id) & mask
            while keys[probe] is not None:
                probe = (probe + 1) & mask
        keys[probe] = task_id
        self.slots[probe] = slot
        used = self.used = self.used + 1
        if used >= self._grow_at:
            self._resize(2 * len(keys))
        # events come in time order: mostly the bucket used last (never equal when NaN)
        if ts // self.bucket_width == self._last_bucket:
            self._last_entries.append(slot | (self._gen[slot] << 32))
        else:
            self._place(slot, ts)
        return slot

    def remove(self, slot: int, probe: int = -1) -> None:
        """Free ``slot`` and forget its task id; ``probe``: where its key is in
        :attr:`keys`, when the caller knows (saves probing again)."""
        ids = self.ids
        task_id = ids[slot]
        if task_id is None:
            return
        ids[slot] = None
        self._gen[slot] = (self._gen[slot] + 1) & 0x7FFFFFFF
        self._free.append(slot)
        keys, mask = self.keys, self.mask
        if probe < 0 or keys[probe] is not task_id:
            probe = hash(task_id) & mask
            while keys[probe] is not task_id:
                if keys[probe] is None:
                    return  # not in the key table (it always is): nothing more to undo
                probe = (probe + 1) & mask
        # Shift back the keys after the hole that may sit there (their search from their
        # home probe passes it), so that no search meets an empty probe too early.
        hole = probe
        probe = (hole + 1) & mask
        key = keys[probe]
        if key is not None:
            slots = self.slots
            while key is not None:
                if (probe - hash(key)) & mask >= (probe - hole) & mask:
                    keys[hole] = key
                    slots[hole] = slots[probe]
                    hole = probe
                probe = (probe + 1) & mask
                key = keys[probe]
        keys[hole] = None
        self.used -= 1
        if self.used < self._shrink_below:
            self._resize(len(keys) // 2)

    def live_slots(self) -> Iterator[int]:
        """Every slot in use."""
        return (slot for slot, task_id in enumerate(self.ids) if task_id is not None)

    def due(self, cutoff: float) -> Iterator[int]:
        """Yield live slots whose bucket ended by ``cutoff`` and whose last touch is at or
        before it; slots touched later are moved to their touch's bucket."""
        width = self.bucket_width
        last = math.floor(cutoff / width) - 1  # buckets that end at or before cutoff
        self._last_bucket = NAN  # it may be popped below
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
        self._last_bucket = NAN

    # -- internals ----------------------------------------------------------------------
    def _grow_contexts(self) -> None:
        assert self.ctx_hi is not None and self.ctx_lo is not None
        assert self.ctx_span is not None and self.ctx_flags is not None
        self.ctx_hi.append(0)
        self.ctx_lo.append(0)
        self.ctx_span.append(0)
        self.ctx_flags.append(0)

    def _place(self, slot: int, ts: float) -> None:
        number = ts // self.bucket_width
        if number - number != 0.0:  # not finite: the first bucket
            number = 0.0
        bucket = self._buckets.get(int(number))
        if bucket is None:
            bucket = self._buckets[int(number)] = array("q")
        bucket.append(slot | (self._gen[slot] << 32))
        self._last_bucket, self._last_entries = number, bucket

    def _resize(self, capacity: int) -> None:
        """Rebuild the key table with ``capacity`` probes (a power of two)."""
        capacity = max(capacity, _MIN_CAPACITY)
        old_keys, old_slots = self.keys, self.slots
        keys: list[str | None] = [None] * capacity
        slots = array("i", bytes(4 * capacity))
        mask = capacity - 1
        for old_probe, key in enumerate(old_keys):
            if key is not None:
                probe = hash(key) & mask
                while keys[probe] is not None:
                    probe = (probe + 1) & mask
                keys[probe] = key
                slots[probe] = old_slots[old_probe]
        self.keys, self.slots, self.mask = keys, slots, mask
        self._grow_at = capacity // 2  # keep it at most half full
        # shrink when at most an eighth full (halving leaves it at most a quarter full)
        self._shrink_below = capacity // 8 if capacity > _MIN_CAPACITY else 0
