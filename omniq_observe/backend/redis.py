"""Events in a Redis Stream, shared by processors through consumer groups.

* ``append`` writes a batch with one Lua script call per ``max_batch`` events (calls
  pipelined): each event is an ``XADD`` to ``<prefix>:events`` and its id is pushed onto
  the task's index list ``<prefix>:task:<task_id>`` (TTL ``history_ttl``), which makes
  ``task_history`` one round trip.
* A processor name is a consumer group. ``claim`` reads new entries with ``XREADGROUP``;
  ``ack`` sends ``XACK`` after the handlers ran, so entries a dead member held stay pending
  and another member takes them over with ``XAUTOCLAIM`` once they were idle for
  ``claim_idle`` seconds. ``wait_for_events`` blocks in ``XREAD``, so a waiting processor
  wakes within milliseconds of a new event.
* A group's position is its acknowledged watermark: just before its oldest pending
  entry, or its last-delivered id when nothing is pending.
* Retention: ``max_len`` trims on every write (``MAXLEN ~``); ``prune`` trims with
  ``MINID`` / ``MAXLEN`` and deletes stragglers by event time.

Delivery is at-least-once. Connection failures are retried (``retries`` times, with
backoff) by redis-py; what still fails raises
:class:`~omniq_observe.exceptions.BackendUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - depends on the environment
    _msg = "RedisBackend needs the redis extra: pip install 'omniq-observe[redis]'"
    from omniq_observe.exceptions import MissingExtraError

    raise MissingExtraError(_msg) from exc

from omniq_observe.backend._redis_scripts import (
    APPEND_SCRIPT,
    HISTORY_SCRIPT,
    id_str,
    parse_stream_id,
    predecessor,
)
from omniq_observe.backend.base import (
    BaseEventStorage,
    Consumer,
    DeadLetter,
    Health,
    Page,
    Position,
    StoredEvent,
    as_utc,
)
from omniq_observe.exceptions import (
    BackendUnavailableError,
    ConfigurationError,
    InvalidURLError,
    StorageError,
)
from omniq_observe.models.event import TaskEvent, decode_event, encode_event

__all__ = ["SCHEMA_VERSION", "RedisBackend"]

SCHEMA_VERSION = 1
_SCAN = 1000
_Entry = tuple[Any, Any]
# URL query parameters that are ours (the rest go to redis-py) and their types.
_URL_OPTIONS: dict[str, type] = {
    "prefix": str,
    "max_len": int,
    "history_ttl": float,
    "claim_idle": float,
    "claim_interval": float,
    "retries": int,
    "socket_timeout": float,
    "connect_timeout": float,
    "max_batch": int,
}


class _Member:
    """What one consumer of a group still has to look at."""

    __slots__ = ("check_own", "next_autoclaim")

    def __init__(self) -> None:
        self.check_own = True  # re-read own pending entries (after start or an error)
        self.next_autoclaim = 0.0


class RedisBackend(BaseEventStorage):
    """Events in a Redis Stream; processors of one name share them as a consumer group.

    One instance belongs to one event loop (it connects lazily, on first use).

    Args:
        url: the Redis URL (``redis://host:6379/0``, ``rediss://...``).
        prefix: the prefix of every key, so several deployments share one Redis.
        max_len: trim the stream to about this many events on every write (``None``:
            keep everything until ``prune``).
        history_ttl: seconds a task's history index lives after its last event.
        claim_idle: seconds an entry must sit unacknowledged with a member before another
            member takes it over; longer than the slowest batch of handlers.
        claim_interval: how often (seconds) a member looks for such entries.
        retries: connection retries per command, with backoff.
        socket_timeout: seconds one command may take.
        connect_timeout: seconds to connect.
        max_batch: events per script call in ``append``.

    Raises:
        ConfigurationError: a setting is invalid.
    """

    backend_name = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "omniq",
        max_len: int | None = None,
        history_ttl: float = 7 * 86400.0,
        claim_idle: float = 60.0,
        claim_interval: float = 1.0,
        retries: int = 3,
        socket_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_batch: int = 500,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            msg = f"prefix must be a non-empty string, got {prefix!r}"
            raise ConfigurationError(msg, setting="prefix", value=prefix)
        if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
            msg = f"max_len must be a positive integer or None, got {max_len!r}"
            raise ConfigurationError(msg, setting="max_len", value=max_len)
        for setting, value in (
            ("history_ttl", history_ttl),
            ("claim_idle", claim_idle),
            ("claim_interval", claim_interval),
            ("socket_timeout", socket_timeout),
            ("connect_timeout", connect_timeout),
        ):
            if not isinstance(value, (int, float)) or value <= 0:
                msg = f"{setting} must be a positive number of seconds, got {value!r}"
                raise ConfigurationError(msg, setting=setting, value=value)
        for setting, value in (("retries", retries), ("max_batch", max_batch)):
            if not isinstance(value, int) or value < (0 if setting == "retries" else 1):
                msg = f"{setting} must be a non-negative integer, got {value!r}"
                raise ConfigurationError(msg, setting=setting, value=value)
        self.url = url
        self.prefix = prefix
        self.max_len = max_len
        self.history_ttl = float(history_ttl)
        self.claim_idle = float(claim_idle)
        self.claim_interval = float(claim_interval)
        self.retries = retries
        self.socket_timeout = float(socket_timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_batch = max_batch
        self.stream = f"{prefix}:events"
        self._task_prefix = f"{prefix}:task:"
        self._positions_key = f"{prefix}:positions"
        self._dead_key = f"{prefix}:dead"
        self._meta_key = f"{prefix}:meta"
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._groups: set[str] = set()
        self._members: dict[Consumer, _Member] = {}
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBackend:
        """Build a backend from ``redis://host:port/db?prefix=x&claim_idle=30``.

        Our query parameters (``prefix``, ``max_len``, ``history_ttl``, ``claim_idle``,
        ``claim_interval``, ``retries``, ``socket_timeout``, ``connect_timeout``,
        ``max_batch``) become keyword arguments; ``options`` override them; any other
        parameter is passed on to redis-py.

        Raises:
            InvalidURLError: a parameter has the wrong type.
        """
        parts = urlsplit(url)
        rest: list[tuple[str, str]] = []
        kwargs: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query):
            kind = _URL_OPTIONS.get(key)
            if kind is None:
                rest.append((key, value))
                continue
            try:
                kwargs[key] = kind(value)
            except ValueError:
                msg = f"storage URL {url!r}: parameter {key}={value!r} is not a {kind.__name__}"
                raise InvalidURLError(msg, setting=key, value=value) from None
        kwargs.update(options)
        return cls(urlunsplit(parts._replace(query=urlencode(rest))), **kwargs)

    # -- connection ----------------------------------------------------------------------
    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            if self._closed:
                msg = f"RedisBackend({self.prefix!r}) is closed"
                raise StorageError(msg)
            retry = Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.5), self.retries)
            self._client = aioredis.Redis.from_url(
                self.url,
                retry=retry,
                retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.connect_timeout,
            )
            self._scripts = {
                "append": self._client.register_script(APPEND_SCRIPT),
                "history": self._client.register_script(HISTORY_SCRIPT),
            }
        return self._client

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            msg = f"Redis at {_safe_url(self.url)} unavailable while {what}: {exc}"
            raise BackendUnavailableError(msg) from exc
        except RedisError as exc:
            msg = f"Redis {what} failed: {exc}"
            raise StorageError(msg) from exc

    # -- writing -------------------------------------------------------------------------
    async def append(self, events: Sequence[TaskEvent]) -> None:
        if not events:
            return
        client = self._redis()
        head: list[Any] = [self._task_prefix, int(self.history_ttl * 1000), self.max_len or 0]
        calls = []
        for start in range(0, len(events), self.max_batch):
            args = head.copy()
            for event in events[start : start + self.max_batch]:
                args.append(event.task_id)
                args.append(encode_event(event))
            calls.append(args)
        script = self._scripts["append"]
        with self._errors("appending events"):
            if len(calls) == 1:
                await script(keys=[self.stream], args=calls[0])
                return
            pipe = client.pipeline(transaction=False)
            for args in calls:
                await script(keys=[self.stream], args=args, client=pipe)
            await pipe.execute()

    # -- the log -------------------------------------------------------------------------
    async def read_after(self, position: Position | None, limit: int) -> list[StoredEvent]:
        start = "-" if position is None else f"({id_str(position)}"
        with self._errors("reading events"):
            entries = await self._redis().xrange(self.stream, start, "+", count=limit)
        return _stored(entries)

    async def last_position(self) -> Position | None:
        with self._errors("reading the last position"):
            entries = await self._redis().xrevrange(self.stream, "+", "-", count=1)
        return id_str(entries[0][0]) if entries else None

    async def commit_position(self, group: str, position: Position) -> None:
        pos = id_str(position)
        client = self._redis()
        with self._errors(f"committing the position of {group!r}"):
            await client.hset(self._positions_key, group, pos)
            if await self._group_info(group) is not None:
                await client.xgroup_setid(self.stream, group, pos)
                # Entries up to ``pos`` count as handled: drop them from the pending list.
                pending = await client.xpending_range(self.stream, group, "-", pos, 10_000)
                ids = [p["message_id"] for p in pending]
                if ids:
                    await client.xack(self.stream, group, *ids)

    async def get_position(self, group: str) -> Position | None:
        with self._errors(f"reading the position of {group!r}"):
            info = await self._group_info(group)
            if info is None:
                raw = await self._redis().hget(self._positions_key, group)
                return None if raw is None else id_str(raw)
            return await self._watermark(group, info)

    async def positions(self) -> dict[str, Position]:
        client = self._redis()
        with self._errors("reading positions"):
            raw = await client.hgetall(self._positions_key)
            found: dict[str, Position] = {id_str(k): id_str(v) for k, v in raw.items()}
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
            infos: list[dict[str, Any]] = await self._redis().xinfo_groups(self.stream)
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
            summary = await self._redis().xpending(self.stream, group)
            if summary["min"] is not None:
                return predecessor(summary["min"])
        last = id_str(info["last-delivered-id"])
        return None if last == "0-0" else last

    # -- processors ----------------------------------------------------------------------
    async def _ensure_group(self, group: str) -> None:
        if group in self._groups:
            return
        client = self._redis()
        start = await client.hget(self._positions_key, group)
        try:
            await client.xgroup_create(
                self.stream, group, id_str(start) if start else "0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(group)

    async def claim(self, consumer: Consumer, limit: int) -> list[StoredEvent]:
        member = self._members.setdefault(consumer, _Member())
        with self._errors(f"claiming events for {consumer.group!r}"):
            try:
                return await self._claim(consumer, member, limit)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._groups.discard(consumer.group)  # deleted behind our back: recreate
                return await self._claim(consumer, member, limit)
            except BaseException:
                member.check_own = True
                raise

    async def _claim(self, consumer: Consumer, member: _Member, limit: int) -> list[StoredEvent]:
        await self._ensure_group(consumer.group)
        client = self._redis()
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
            member.next_autoclaim = now + self.claim_interval
            next_id, entries, *_ = await client.xautoclaim(
                self.stream, group, name, int(self.claim_idle * 1000), "0-0", count=limit
            )
            if id_str(next_id) != "0-0":
                member.next_autoclaim = now  # more to take over: look again next time
            stored = await self._live(group, entries)
            if stored:
                return stored
        reply = await client.xreadgroup(group, name, {self.stream: ">"}, count=limit)
        return _stored(reply[0][1]) if reply else []

    async def _live(self, group: str, entries: list[_Entry]) -> list[StoredEvent]:
        """Drop pending entries whose event was pruned (acknowledging them)."""
        gone = [entry_id for entry_id, fields in entries if not fields]
        if gone:
            await self._redis().xack(self.stream, group, *gone)
        return _stored([entry for entry in entries if entry[1]])

    async def ack(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        if not batch:
            return
        ids = [stored.position for stored in batch]
        try:
            with self._errors(f"acknowledging events of {consumer.group!r}"):
                await self._redis().xack(self.stream, consumer.group, *ids)
        except BaseException:
            self._members.setdefault(consumer, _Member()).check_own = True
            raise

    async def release(self, consumer: Consumer) -> None:
        """Hand this member's unacknowledged entries to the other members at once."""
        self._members.pop(consumer, None)
        if consumer.group not in self._groups or self._client is None:
            return
        client = self._client
        group, name = consumer.group, consumer.member
        with self._errors(f"releasing {consumer.member!r} of {group!r}"):
            pending = await client.xpending_range(
                self.stream, group, "-", "+", 100_000, consumername=name
            )
            ids = [p["message_id"] for p in pending]
            if ids:
                # Mark them idle for long: the next XAUTOCLAIM of any member takes them.
                await client.xclaim(
                    self.stream, group, name, 0, ids, idle=2**40, justid=True
                )
            else:
                await client.xgroup_delconsumer(self.stream, group, name)

    async def has_events_for(self, consumer: Consumer) -> bool:
        with self._errors(f"checking for events of {consumer.group!r}"):
            return (await self._next_after(consumer)) is None

    async def _next_after(self, consumer: Consumer) -> str | None:
        """``None`` when the group has events to claim now, else the id to wait after."""
        client = self._redis()
        info = await self._group_info(consumer.group)
        if info is None:
            raw = await client.hget(self._positions_key, consumer.group)
            after = id_str(raw) if raw else "0-0"
        else:
            after = id_str(info["last-delivered-id"])
            if info["pending"]:
                idle = await client.xpending_range(
                    self.stream, consumer.group, "-", "+", 1,
                    idle=int(self.claim_idle * 1000),
                )
                if idle:
                    return None
        last = await client.xrevrange(self.stream, "+", "-", count=1)
        if last and parse_stream_id(last[0][0]) > parse_stream_id(after):
            return None
        return after

    async def wait_for_events(self, consumer: Consumer, timeout: float) -> bool:
        """Block in ``XREAD`` until an entry after the group's last delivery arrives."""
        with self._errors(f"waiting for events of {consumer.group!r}"):
            after = await self._next_after(consumer)
            if after is None:
                return True
            block = max(1, int(min(timeout, self.socket_timeout / 2) * 1000))
            reply = await self._redis().xread({self.stream: after}, count=1, block=block)
        return bool(reply)

    # -- dead letters --------------------------------------------------------------------
    async def record_dead_letter(self, dead: DeadLetter) -> None:
        fields = {
            "g": dead.group,
            "h": dead.handler,
            "err": dead.error,
            "n": str(dead.attempts),
            "p": id_str(dead.position),
            "e": encode_event(dead.event),
        }
        with self._errors("recording a dead letter"):
            await self._redis().xadd(self._dead_key, fields)  # type: ignore[arg-type]

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        with self._errors("reading dead letters"):
            entries = await self._redis().xrange(self._dead_key)
        found = []
        for _, f in entries:
            g = f[b"g"].decode()
            if group is None or g == group:
                found.append(
                    DeadLetter(g, f[b"h"].decode(), f[b"err"].decode(), int(f[b"n"]),
                               decode_event(f[b"e"]), f[b"p"].decode())
                )
        return found

    # -- queries -------------------------------------------------------------------------
    async def task_history(self, task_id: str, limit: int = 1000) -> list[TaskEvent]:
        script = self._scripts.get("history") if self._client else None
        if script is None:
            self._redis()
            script = self._scripts["history"]
        with self._errors(f"reading the history of task {task_id!r}"):
            bodies = await script(keys=[self.stream, self._task_prefix + task_id], args=[limit])
        return [decode_event(body) for body in bodies]

    async def query(
        self,
        *,
        event_types: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        after: Position | None = None,
    ) -> Page:
        types = {t.upper() for t in event_types} if event_types else None
        since, until = as_utc(since), as_utc(until)
        found: list[StoredEvent] = []
        start = "-" if after is None else f"({id_str(after)}"
        client = self._redis()
        while True:
            with self._errors("querying events"):
                entries = await client.xrange(self.stream, start, "+", count=_SCAN)
            for stored in _stored(entries):
                event = stored.event
                if types is not None and event.event_type not in types:
                    continue
                if since is not None and event.timestamp < since:
                    continue
                if until is not None and event.timestamp >= until:
                    continue
                if len(found) == limit:
                    return Page(found, found[-1].position)
                found.append(stored)
            if len(entries) < _SCAN:
                return Page(found, None)
            start = f"({id_str(entries[-1][0])}"

    async def count(self) -> int:
        with self._errors("counting events"):
            return int(await self._redis().xlen(self.stream))

    async def prune(
        self, *, older_than: datetime | None = None, max_events: int | None = None
    ) -> int:
        client = self._redis()
        deleted = 0
        with self._errors("pruning events"):
            cutoff = as_utc(older_than)
            if cutoff is not None:
                deleted += await self._prune_older(cutoff)
            if max_events is not None:
                deleted += int(
                    await client.xtrim(self.stream, maxlen=max_events, approximate=False)
                )
        return deleted

    async def _prune_older(self, cutoff: datetime) -> int:
        """Trim the leading run of old events with MINID, then delete old stragglers."""
        client = self._redis()
        first_kept: str | None = None
        stragglers: list[str] = []
        start = "-"
        leading = 0
        while True:
            entries = await client.xrange(self.stream, start, "+", count=_SCAN)
            for stored in _stored(entries):
                old = stored.event.timestamp < cutoff
                if first_kept is None:
                    if old:
                        leading += 1
                    else:
                        first_kept = str(stored.position)
                elif old:
                    stragglers.append(str(stored.position))
            if len(entries) < _SCAN:
                break
            start = f"({id_str(entries[-1][0])}"
        deleted = 0
        if first_kept is None and leading:
            deleted += int(await client.xtrim(self.stream, maxlen=0, approximate=False))
        elif leading:
            deleted += int(await client.xtrim(self.stream, minid=first_kept, approximate=False))
        for i in range(0, len(stragglers), _SCAN):
            deleted += int(await client.xdel(self.stream, *stragglers[i : i + _SCAN]))
        return deleted

    async def health(self) -> Health:
        try:
            client = self._redis()
            with self._errors("checking health"):
                await client.hsetnx(self._meta_key, "schema_version", SCHEMA_VERSION)
                pipe = client.pipeline(transaction=False)
                pipe.xlen(self.stream)
                pipe.hget(self._meta_key, "schema_version")
                length, version = await pipe.execute()
        except Exception as exc:
            return Health(ok=False, backend=self.backend_name, detail=str(exc))
        return Health(
            ok=True,
            backend=self.backend_name,
            detail=f"{_safe_url(self.url)} {self.stream}: {length} events",
            schema_version=int(version),
            extra={"stream": self.stream, "events": int(length)},
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()


def _stored(entries: list[_Entry]) -> list[StoredEvent]:
    return [StoredEvent(id_str(entry_id), decode_event(fields[b"e"])) for entry_id, fields in entries]


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
