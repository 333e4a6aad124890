"""Processor groups of :mod:`omniq_observe.backend.redis`: task-routed partitions, leased.

A processor name is a Redis consumer group on every partition's stream, a processor process
is one of its members. The members divide the partitions through leases (see
:data:`~omniq_observe.backend.redis._scripts.LEASE_SCRIPT`): each holds whole partitions,
so every event of one task goes to the same member and its pairing sees whole tasks.

* A member renews its leases at a claim every ``claim_interval`` (at most a third of
  ``claim_idle``, the lease), and while its handlers run (``renew``). Joining or leaving
  members rebalance the partitions at those renewals.
* In the partitions it holds, a member reads new entries with ``XREADGROUP >``; they stay
  in the group's pending list until ``XACK``.
* A member that takes a partition over (its holder left, or died: its lease ended after
  ``claim_idle``, or at once when its process on this host is gone) first moves the entries
  pending there to itself (``XAUTOCLAIM``) and handles them, so nothing a dead member held
  is lost.
* A member reads ahead in each partition (delivered to it, so pending) and hands out the
  lowest ids of all its partitions, so a batch is in log order.
* A group's position is its acknowledged watermark: the newest entry before the oldest
  one of any partition that is pending or not yet delivered, else the newest delivered.

Errors propagate as redis-py exceptions; the backend translates them.
"""

from __future__ import annotations

import asyncio
import bisect
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from omniq_observe.backend._partitions import HOST, pid_gone
from omniq_observe.backend.base import Consumer, StoredEvent, decode_stored
from omniq_observe.backend.redis._core import (
    Entry,
    Owner,
    entry_body,
    id_str,
    parse_stream_id,
    predecessor,
)

__all__ = ["StreamGroups"]

_numbers = msgspec.json.Decoder(list[int])


class _Partition:
    """A member's reading of one partition it holds: entries it read and did not hand out
    yet (they are pending for it, delivered), and where it reads next."""

    __slots__ = ("bodies", "cursor", "done", "ids", "keys", "low", "taken")

    def __init__(self) -> None:
        # "0" or an entry id: its own pending entries after that come first; ">": new ones
        self.cursor = "0"
        # The entries read ahead, as ids, numbers to merge by and bodies: bytes and ints,
        # which the garbage collector does not track, so that a read-ahead costs its
        # collections nothing (decoded events would: their details are dicts).
        self.ids: list[bytes] = []
        self.keys: list[int] = []
        self.bodies: list[bytes | None] = []
        self.taken = 0  # how many were handed out
        self.done = False  # nothing more to read in this claim
        self.low = False  # read on before handing out more

    @property
    def ahead(self) -> int:
        """How many entries it read and did not hand out yet."""
        return len(self.ids) - self.taken

    def read(self, entries: list[Entry], count: int) -> list[Any]:
        """Keep what one read of up to ``count`` entries brought, after what it has;
        return the ids of pending entries whose event was pruned (to acknowledge)."""
        gone = [entry_id for entry_id, fields in entries if not fields]
        live = [entry for entry in entries if entry[1]] if gone else entries
        ids = [entry[0] for entry in live]
        taken = self.taken
        self.ids = self.ids[taken:] + ids
        self.keys = self.keys[taken:] + _keys(ids)
        self.bodies = self.bodies[taken:] + [
            fields[1] if fields[0] == b"e" else entry_body(fields) for _, fields in live]
        self.taken = 0
        self.low = False
        if self.cursor == ">":
            self.done = len(entries) < count
        elif len(entries) < count:
            self.cursor = ">"  # its own pending ones read: new ones next
        else:
            self.cursor = id_str(entries[-1][0])
        return gone

    def upto(self, cut: int | None) -> int:
        """Where the entries not handed out yet whose id is at most ``cut`` end."""
        if cut is None:
            return len(self.ids)
        return bisect.bisect_right(self.keys, cut, lo=self.taken)


class _Member:
    """What one member of a group holds."""

    __slots__ = ("batches", "held", "parts", "refresh_at", "takeover")

    def __init__(self) -> None:
        self.held: tuple[int, ...] = ()  # the partitions it holds
        self.parts: dict[int, _Partition] = {}
        self.takeover: set[int] = set()  # taken over: move what others left pending first
        self.refresh_at = 0.0  # when (loop time) to renew the leases and rebalance
        # The batches handed out and not acknowledged yet, by the id of their last entry:
        # their size and their entry ids by partition.
        self.batches: dict[Any, tuple[int, dict[int, list[Any]]]] = {}

    def hold(self, held: tuple[int, ...], taken: Iterable[int]) -> None:
        """Hold the partitions ``held``, of which ``taken`` were taken over just now."""
        self.held = held
        self.takeover = (self.takeover | set(taken)) & set(held)
        self.parts = {part: self.parts.get(part) or _Partition() for part in held}

    def reread(self) -> None:
        """Read its own pending entries again (after an error: a reply may be lost)."""
        self.parts = {part: _Partition() for part in self.held}
        self.batches.clear()

    @property
    def unread(self) -> bool:
        """Whether it has entries to hand out without a new read (or must reread)."""
        return any(r.ahead or r.cursor != ">" for r in self.parts.values())


class StreamGroups:
    """The processor-group side of one Redis backend."""

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self._groups: set[str] = set()
        self._members: dict[Consumer, _Member] = {}
        self._index: dict[bytes, int] | None = None  # stream name -> partition

    @property
    def _streams(self) -> tuple[str, ...]:
        return self.owner.keys.streams

    # -- positions -----------------------------------------------------------------------
    async def commit_position(self, group: str, pos: str) -> None:
        client = self.owner.client()
        await client.hset(self.owner.keys.positions, group, pos)
        for consumer, member in self._members.items():
            if consumer.group == group:
                member.reread()  # what it read ahead may be handled now
        for part, groups in enumerate(await self._infos()):
            if group in groups:
                stream = self._streams[part]
                await client.xgroup_setid(stream, group, pos)
                # Entries up to ``pos`` count as handled, those after it come again: either
                # way they leave the pending list.
                pending = await client.xpending_range(stream, group, "-", "+", 100_000)
                ids = [p["message_id"] for p in pending]
                if ids:
                    await client.xack(stream, group, *ids)

    async def get_position(self, group: str) -> str | None:
        infos = await self._infos()
        stored = await self.owner.client().hget(self.owner.keys.positions, group)
        return await self._watermark(group, infos, None if stored is None else id_str(stored))

    async def positions(self) -> dict[str, str]:
        raw = await self.owner.client().hgetall(self.owner.keys.positions)
        stored = {id_str(k): id_str(v) for k, v in raw.items()}
        infos = await self._infos()
        found = {}
        for name in sorted(stored.keys() | {name for groups in infos for name in groups}):
            position = await self._watermark(name, infos, stored.get(name))
            if position is not None:
                found[name] = position
        return found

    async def _infos(self, parts: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Per partition (of ``parts``, default all): its groups by name (``XINFO GROUPS``)."""
        streams = self._streams
        chosen = range(len(streams)) if parts is None else parts
        pipe = self.owner.client().pipeline(transaction=False)
        for part in chosen:
            pipe.xinfo_groups(streams[part])
        found: list[dict[str, Any]] = []
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, ResponseError):
                if "no such key" not in str(reply).lower():
                    raise reply
                reply = []
            found.append({id_str(info["name"]): info for info in reply})
        return found

    async def _watermark(
        self, group: str, infos: list[dict[str, Any]], stored: str | None
    ) -> str | None:
        """The acknowledged position of ``group``: everything up to it was handled."""
        if not any(group in groups for groups in infos):
            return stored
        pipe = self.owner.client().pipeline(transaction=False)
        delivered = []
        for stream, groups in zip(self._streams, infos, strict=True):
            info = groups.get(group)
            last = id_str(info["last-delivered-id"]) if info else (stored or "0-0")
            delivered.append(last)
            if info and info["pending"]:
                pipe.xpending(stream, group)
            else:
                pipe.xrange(stream, f"({last}", "+", count=1)
        firsts = []  # the oldest entry of each partition not handled yet
        for reply in await pipe.execute():
            first = reply["min"] if isinstance(reply, dict) else (reply[0][0] if reply else None)
            if first is not None:
                firsts.append(parse_stream_id(first))
        if firsts:
            return await self._before("{}-{}".format(*min(firsts)))
        newest = max(delivered, key=parse_stream_id)
        return None if newest == "0-0" else newest

    async def _before(self, entry_id: str) -> str | None:
        """The newest entry before ``entry_id``, else the id just before it."""
        pipe = self.owner.client().pipeline(transaction=False)
        for stream in self._streams:
            pipe.xrevrange(stream, f"({entry_id}", "-", count=1)
        ids = [entries[0][0] for entries in await pipe.execute() if entries]
        return id_str(max(ids, key=parse_stream_id)) if ids else predecessor(entry_id)

    # -- claiming ------------------------------------------------------------------------
    async def _ensure_group(self, group: str) -> None:
        if group in self._groups:
            return
        client = self.owner.client()
        start = await client.hget(self.owner.keys.positions, group)
        pipe = client.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xgroup_create(stream, group, id_str(start) if start else "0", mkstream=True)
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply
        self._groups.add(group)

    async def claim(self, consumer: Consumer, limit: int) -> list[StoredEvent]:
        """The next ``limit`` entries of the partitions ``consumer`` holds, in id order:
        in each, what it holds pending first (taken over, or its own), then new ones."""
        member = self._members.setdefault(consumer, _Member())
        try:
            try:
                return await self._claim(consumer, member, limit)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._groups.discard(consumer.group)  # deleted behind our back: recreate
                member.reread()
                return await self._claim(consumer, member, limit)
        except BaseException:
            member.reread()
            raise

    async def _claim(self, consumer: Consumer, member: _Member, limit: int) -> list[StoredEvent]:
        await self._ensure_group(consumer.group)
        now = asyncio.get_running_loop().time()
        if now >= member.refresh_at:
            await self._lease(consumer, member, "claim")
            owner = self.owner
            member.refresh_at = now + min(owner.claim_interval, owner.claim_idle / 3)
            if not member.batches and not any(r.ahead for r in member.parts.values()):
                # Nothing in hand: anything pending for it is an entry whose delivery it
                # never saw (a read redis-py retried after its reply was lost): read again.
                member.reread()
        if not member.held:
            return []
        if member.takeover:
            await self._take_over(consumer, sorted(member.takeover))
            member.takeover.clear()
        return await self._merge(consumer, member, limit)

    async def _lease(self, consumer: Consumer, member: _Member, mode: str) -> None:
        """Run the lease script (``claim``, ``renew`` or ``release``) for ``consumer``."""
        keys = self.owner.keys
        group_keys = keys.group_keys(consumer.group)
        dead = await self._dead(consumer, group_keys[2]) if mode == "claim" else []
        held, taken = await self.owner.script("lease")(
            keys=list(group_keys),
            args=[consumer.member, int(self.owner.claim_idle * 1000), keys.partitions, mode,
                  f"{HOST} {os.getpid()}", *dead],
        )
        member.hold(tuple(int(part) for part in held), [int(part) for part in taken])

    async def _dead(self, consumer: Consumer, hosts: str) -> list[str]:
        """The other members of the group that ran on this host and whose process is gone."""
        dead = []
        for name, where in (await self.owner.client().hgetall(hosts)).items():
            host, _, pid = id_str(where).rpartition(" ")
            if host == HOST and id_str(name) != consumer.member and pid_gone(int(pid)):
                dead.append(id_str(name))
        return dead

    async def _take_over(self, consumer: Consumer, parts: list[int]) -> None:
        """Move the entries other members left pending in ``parts`` to ``consumer`` (one
        round trip for all of them, while none has more than a page)."""
        client, streams = self.owner.client(), self._streams
        cursors = dict.fromkeys(parts, "0-0")
        while cursors:
            pipe = client.pipeline(transaction=False)
            for part, cursor in cursors.items():
                pipe.xautoclaim(streams[part], consumer.group, consumer.member, 0, cursor,
                                count=1000)
            replies = await pipe.execute()
            cursors = {part: id_str(reply[0]) for part, reply in zip(cursors, replies, strict=True)
                       if id_str(reply[0]) != "0-0"}

    async def _merge(self, consumer: Consumer, member: _Member, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` entries of the held partitions merged by id; what a partition
        read beyond them stays with the member for its next claim."""
        parts = member.parts
        count = max(16, 2 * limit // len(parts))
        while True:
            cut = await self._top_up(consumer, member, count)
            ends = {p: r.upto(cut) for p, r in parts.items()}
            if cut is None or sum(ends[p] - r.taken for p, r in parts.items()) >= limit:
                break
            for part, reading in parts.items():  # too few before the cut: read on where
                reading.low = ends[part] == len(reading.ids)  # all would be handed out
        for reading in parts.values():
            reading.done = False  # the next claim looks again
        keys: list[int] = []
        ids: list[bytes] = []
        bodies: list[bytes | None] = []
        owners: list[int] = []
        for part, reading in parts.items():
            keys += reading.keys[reading.taken : ends[part]]
            ids += reading.ids[reading.taken : ends[part]]
            bodies += reading.bodies[reading.taken : ends[part]]
            owners += [part] * (ends[part] - reading.taken)
        if len(ids) > limit or sum(1 for p, r in parts.items() if ends[p] > r.taken) > 1:
            order = sorted(range(len(keys)), key=keys.__getitem__)[:limit]
            ids, bodies = [ids[i] for i in order], [bodies[i] for i in order]
            owners = [owners[i] for i in order]
        return self._hand_out(member, ids, bodies, owners)

    @staticmethod
    def _hand_out(member: _Member, ids: list[bytes], bodies: list[bytes | None],
                  owners: list[int]) -> list[StoredEvent]:
        """The chosen entries as stored events; the member remembers the batch by
        partition for its acknowledgement."""
        by_part: dict[int, list[Any]] = {}
        for part, taken in Counter(owners).items():
            reading = member.parts[part]
            by_part[part] = reading.ids[reading.taken : reading.taken + taken]
            reading.taken += taken
        events = [decode_stored(entry_id.decode(), body)
                  for entry_id, body in zip(ids, bodies, strict=True)]
        if events:
            member.batches[events[-1].position] = (len(events), by_part)
        return events

    async def _top_up(self, consumer: Consumer, member: _Member, count: int) -> int | None:
        """Read on in the partitions that may run dry in this claim (one round trip);
        return the cut: the lowest last-read id of the partitions that may have more."""
        low = [p for p, r in member.parts.items() if not r.done and (r.low or r.ahead < count)]
        if low:
            await self._fill(consumer, member, low, count)
        return min((r.keys[-1] for r in member.parts.values() if not r.done and r.ahead),
                   default=None)

    async def _fill(
        self, consumer: Consumer, member: _Member, parts: list[int], count: int
    ) -> None:
        """Read up to ``count`` more entries into each of ``parts``: its own pending
        entries first, then new ones, until it has some or none are left."""
        streams = self._streams
        while parts:
            readings = {part: member.parts[part] for part in parts}
            reply = await self.owner.client().xreadgroup(
                consumer.group, consumer.member,
                {streams[p]: r.cursor for p, r in readings.items()}, count=count,
            )
            got = self._by_partition(reply)
            gone = {part: reading.read(got.get(part, []), count)
                    for part, reading in readings.items()}
            if any(gone.values()):
                await self._xack(consumer.group, gone)
            parts = [p for p, r in readings.items() if not r.ahead and not r.done]

    def _by_partition(self, reply: Any) -> dict[int, list[Entry]]:
        """An ``XREADGROUP`` reply as the entries of each partition."""
        if not reply:
            return {}
        if self._index is None:
            self._index = {stream.encode(): part for part, stream in enumerate(self._streams)}
        return {self._index[name]: entries for name, entries in reply}

    async def _xack(self, group: str, ids: dict[int, list[Any]]) -> None:
        """Acknowledge entries, given by partition."""
        pipe = self.owner.client().pipeline(transaction=False)
        for part, entry_ids in ids.items():
            if entry_ids:
                pipe.xack(self._streams[part], group, *entry_ids)
        await pipe.execute()

    async def ack(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        """XACK a handled batch, in the streams its entries came from."""
        member = self._members.setdefault(consumer, _Member())
        size, ids = member.batches.pop(batch[-1].position, (0, {}))
        if size != len(batch):  # not a batch as handed out: ack in every stream
            everywhere: list[Any] = [s.position for s in batch]
            ids = dict.fromkeys(range(len(self._streams)), everywhere)
        try:
            await self._xack(consumer.group, ids)
        except BaseException:
            member.reread()
            raise

    async def renew(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        """Renew the member's leases (it holds on to its partitions while its handlers run)."""
        if batch and consumer.group in self._groups:
            await self._lease(consumer, self._members.setdefault(consumer, _Member()), "renew")

    async def release(self, consumer: Consumer) -> None:
        """Free this member's partitions at once (the next holder takes over what it left
        pending); forget it where it holds nothing."""
        self._members.pop(consumer, None)
        if consumer.group not in self._groups:
            return
        await self._lease(consumer, _Member(), "release")
        client, streams = self.owner.client(), self._streams
        group, name = consumer.group, consumer.member
        pipe = client.pipeline(transaction=False)
        for stream in streams:
            pipe.xpending_range(stream, group, "-", "+", 1, consumername=name)
        idle = [s for s, pending in zip(streams, await pipe.execute(), strict=True)
                if not pending]
        pipe = client.pipeline(transaction=False)
        for stream in idle:
            pipe.xgroup_delconsumer(stream, group, name)
        await pipe.execute()

    # -- waiting -------------------------------------------------------------------------
    async def _after(self, consumer: Consumer) -> dict[str, str] | None:
        """Where the group's deliveries stand in each stream ``consumer`` holds (all of
        them before its first claim); ``None`` when it has entries to hand out already."""
        member = self._members.get(consumer)
        if member is not None and member.unread:
            return None
        parts = range(len(self._streams)) if member is None else member.held
        if not parts:
            return {}
        infos = await self._infos(parts)
        stored = await self.owner.client().hget(self.owner.keys.positions, consumer.group)
        start = id_str(stored) if stored else "0-0"
        return {self._streams[part]: (id_str(groups[consumer.group]["last-delivered-id"])
                                      if consumer.group in groups else start)
                for part, groups in zip(parts, infos, strict=True)}

    async def has_events(self, consumer: Consumer) -> bool:
        """Whether ``consumer`` has events to claim now."""
        after = await self._after(consumer)
        if after is None:
            return True
        return bool(after) and bool(await self.owner.client().xread(after, count=1))

    async def wait(self, consumer: Consumer, timeout: float) -> bool:
        """Block in ``XREAD`` until an entry after the group's last delivery arrives in a
        partition ``consumer`` holds; wake for its next lease renewal at the latest."""
        member = self._members.get(consumer)
        block = min(timeout, self.owner.socket_timeout / 2)
        if member is not None:
            block = min(block, member.refresh_at - asyncio.get_running_loop().time())
            if block <= 0:
                return True  # time to renew the leases (and maybe take partitions over)
        after = await self._after(consumer)
        if after is None:
            return True
        if not after:
            await asyncio.sleep(block)  # holds nothing until its next renewal
            return False
        reply = await self.owner.client().xread(after, count=1, block=max(1, int(block * 1000)))
        return bool(reply)


def _keys(entry_ids: list[bytes]) -> list[int]:
    """Entry ids as sortable numbers (``ms << 64 | seq``), parsed in one call."""
    if not entry_ids:
        return []
    numbers = _numbers.decode(b"[" + b",".join(entry_ids).replace(b"-", b",") + b"]")
    return [ms << 64 | seq for ms, seq in zip(numbers[::2], numbers[1::2], strict=True)]
