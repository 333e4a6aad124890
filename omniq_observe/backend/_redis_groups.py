"""Consumer groups of :mod:`omniq_observe.backend.redis`: claim, ack, take over, positions.

A processor name is a Redis consumer group on the stream, a processor process is one of
its consumers. New entries come from ``XREADGROUP >``; entries a member holds stay in the
group's pending list until ``XACK``; entries idle for ``claim_idle`` go to whichever member
runs ``XAUTOCLAIM`` next (every ``claim_interval``). Errors propagate as redis-py
exceptions; the backend translates them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from omniq_observe.backend._redis_scripts import id_str, parse_stream_id, predecessor
from omniq_observe.backend.base import Consumer, StoredEvent, decode_stored

if TYPE_CHECKING:
    from omniq_observe.backend.redis import RedisBackend

__all__ = ["StreamGroups", "stored_entries"]

_Entry = tuple[Any, Any]


class _Member:
    """What one consumer of a group still has to look at."""

    __slots__ = ("check_own", "next_autoclaim")

    def __init__(self) -> None:
        self.check_own = True  # re-read own pending entries (after start or an error)
        self.next_autoclaim = 0.0


class StreamGroups:
    """The consumer-group side of one :class:`RedisBackend`."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.stream = backend.stream
        self.positions_key = f"{backend.prefix}:positions"
        self._groups: set[str] = set()
        self._members: dict[Consumer, _Member] = {}

    # -- positions -----------------------------------------------------------------------
    async def commit_position(self, group: str, pos: str) -> None:
        client = self.backend.client()
        await client.hset(self.positions_key, group, pos)
        if await self._group_info(group) is not None:
            await client.xgroup_setid(self.stream, group, pos)
            # Entries up to ``pos`` count as handled: drop them from the pending list.
            pending = await client.xpending_range(self.stream, group, "-", pos, 100_000)
            ids = [p["message_id"] for p in pending]
            if ids:
                await client.xack(self.stream, group, *ids)

    async def get_position(self, group: str) -> str | None:
        info = await self._group_info(group)
        if info is None:
            raw = await self.backend.client().hget(self.positions_key, group)
            return None if raw is None else id_str(raw)
        return await self._watermark(group, info)

    async def positions(self) -> dict[str, str]:
        raw = await self.backend.client().hgetall(self.positions_key)
        found = {id_str(k): id_str(v) for k, v in raw.items()}
        for info in await self._groups_info():
            name = id_str(info["name"])
            position = await self._watermark(name, info)
            if position is not None:
                found[name] = position
            else:
                found.pop(name, None)
        return found

    async def _groups_info(self) -> list[dict[str, Any]]:
        try:
            infos: list[dict[str, Any]] = await self.backend.client().xinfo_groups(self.stream)
        except ResponseError as exc:
            if "no such key" in str(exc).lower():
                return []
            raise
        return infos

    async def _group_info(self, group: str) -> dict[str, Any] | None:
        for info in await self._groups_info():
            if id_str(info["name"]) == group:
                return info
        return None

    async def _watermark(self, group: str, info: dict[str, Any]) -> str | None:
        """The acknowledged position of a group: everything up to it was handled."""
        if info["pending"]:
            summary = await self.backend.client().xpending(self.stream, group)
            if summary["min"] is not None:
                return predecessor(summary["min"])
        last = id_str(info["last-delivered-id"])
        return None if last == "0-0" else last

    # -- claiming ------------------------------------------------------------------------
    async def _ensure_group(self, group: str) -> None:
        if group in self._groups:
            return
        client = self.backend.client()
        start = await client.hget(self.positions_key, group)
        try:
            await client.xgroup_create(
                self.stream, group, id_str(start) if start else "0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(group)

    async def claim(self, consumer: Consumer, limit: int) -> list[StoredEvent]:
        """Own unacknowledged entries first, then idle ones of others, then new ones."""
        member = self._members.setdefault(consumer, _Member())
        try:
            try:
                return await self._claim(consumer, member, limit)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._groups.discard(consumer.group)  # deleted behind our back: recreate
                return await self._claim(consumer, member, limit)
        except BaseException:
            member.check_own = True  # a reply may be lost: its entries are ours now
            raise

    async def _claim(self, consumer: Consumer, member: _Member, limit: int) -> list[StoredEvent]:
        await self._ensure_group(consumer.group)
        client = self.backend.client()
        group, name = consumer.group, consumer.member
        if member.check_own:
            # Entries delivered to this member but never acknowledged (a lost reply, a
            # failed ack, or an earlier process of the same member name).
            reply = await client.xreadgroup(group, name, {self.stream: "0"}, count=limit)
            entries = reply[0][1] if reply else []
            member.check_own = len(entries) >= limit
            stored = await self._live(group, entries)
            if stored:
                return stored
        now = asyncio.get_running_loop().time()
        if now >= member.next_autoclaim:
            member.next_autoclaim = now + self.backend.claim_interval
            next_id, entries, *_ = await client.xautoclaim(
                self.stream, group, name, int(self.backend.claim_idle * 1000), "0-0", count=limit
            )
            if id_str(next_id) != "0-0":
                member.next_autoclaim = now  # more to take over: look again next time
            stored = await self._live(group, entries)
            if stored:
                return stored
        reply = await client.xreadgroup(group, name, {self.stream: ">"}, count=limit)
        return stored_entries(reply[0][1]) if reply else []

    async def _live(self, group: str, entries: list[_Entry]) -> list[StoredEvent]:
        """Drop pending entries whose event was pruned (acknowledging them)."""
        gone = [entry_id for entry_id, fields in entries if not fields]
        if gone:
            await self.backend.client().xack(self.stream, group, *gone)
        return stored_entries([entry for entry in entries if entry[1]])

    async def ack(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        """XACK a handled batch."""
        ids = [stored.position for stored in batch]
        try:
            await self.backend.client().xack(self.stream, consumer.group, *ids)
        except BaseException:
            self._members.setdefault(consumer, _Member()).check_own = True
            raise

    async def renew(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        """Reset the idle time of the entries of ``batch`` this member still holds, so
        that no other member's ``XAUTOCLAIM`` takes them while its handlers run."""
        if not batch:
            return
        client = self.backend.client()
        group, name = consumer.group, consumer.member
        pending = await client.xpending_range(
            self.stream, group, str(batch[0].position), str(batch[-1].position), len(batch),
            consumername=name,
        )
        ids = [p["message_id"] for p in pending]
        if ids:
            await client.xclaim(self.stream, group, name, 0, ids, justid=True)

    async def release(self, consumer: Consumer) -> None:
        """Mark this member's pending entries long idle, so that the next ``XAUTOCLAIM``
        of any member takes them; forget the member when it holds nothing."""
        self._members.pop(consumer, None)
        if consumer.group not in self._groups:
            return
        client = self.backend.client()
        group, name = consumer.group, consumer.member
        pending = await client.xpending_range(
            self.stream, group, "-", "+", 100_000, consumername=name
        )
        ids = [p["message_id"] for p in pending]
        if ids:
            await client.xclaim(self.stream, group, name, 0, ids, idle=2**40, justid=True)
        else:
            await client.xgroup_delconsumer(self.stream, group, name)

    # -- waiting -------------------------------------------------------------------------
    async def next_after(self, consumer: Consumer) -> str | None:
        """``None`` when the group has events to claim now, else the id to wait after."""
        client = self.backend.client()
        info = await self._group_info(consumer.group)
        if info is None:
            raw = await client.hget(self.positions_key, consumer.group)
            after = id_str(raw) if raw else "0-0"
        else:
            after = id_str(info["last-delivered-id"])
            if info["pending"]:
                idle = await client.xpending_range(
                    self.stream, consumer.group, "-", "+", 1,
                    idle=int(self.backend.claim_idle * 1000),
                )
                if idle:
                    return None
        last = await client.xrevrange(self.stream, "+", "-", count=1)
        if last and parse_stream_id(last[0][0]) > parse_stream_id(after):
            return None
        return after

    async def wait(self, consumer: Consumer, timeout: float) -> bool:
        """Block in ``XREAD`` until an entry after the group's last delivery arrives."""
        after = await self.next_after(consumer)
        if after is None:
            return True
        block = max(1, int(min(timeout, self.backend.socket_timeout / 2) * 1000))
        reply = await self.backend.client().xread({self.stream: after}, count=1, block=block)
        return bool(reply)


def stored_entries(entries: list[_Entry]) -> list[StoredEvent]:
    """Stream entries ``(id, {b"e": body})`` as stored events (an entry that does not
    decode as an ``UndecodableEvent``)."""
    return [decode_stored(id_str(key), fields.get(b"e")) for key, fields in entries]
