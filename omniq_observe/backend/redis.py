"""Events in a Redis Stream, shared by processors through consumer groups.

* ``append`` writes a batch with one Lua script call per ``max_batch`` events (calls
  pipelined): each event is an ``XADD`` to ``<prefix>:events`` and its id is pushed onto
  the task's index list ``<prefix>:task:<task_id>`` (TTL ``history_ttl``), which makes
  ``task_history`` one round trip. The script skips an event whose ``event_id`` is in the
  recent-id sets (``<prefix>:recent``, the last ``dedup_window`` to twice that many ids),
  so an append retried after its reply was lost stores nothing twice. Entry ids follow
  event time (see ``_redis_scan``), so ``query(since=)`` and ``prune`` seek instead of
  scanning.
* A processor name is a consumer group. ``claim`` reads new entries with ``XREADGROUP``;
  ``ack`` sends ``XACK`` after the handlers ran, so entries a dead member held stay pending
  and another member takes them over with ``XAUTOCLAIM`` once they were idle for
  ``claim_idle`` seconds. ``wait_for_events`` blocks in ``XREAD``, so a waiting processor
  wakes within milliseconds of a new event.
* A group's position is its acknowledged watermark: just before its oldest pending
  entry, or its last-delivered id when nothing is pending.
* Retention: ``max_len`` trims on every write (``MAXLEN ~``); ``prune`` trims with
  ``MINID`` (removing the pruned ids from the task index lists) or ``MAXLEN``.

Delivery is at-least-once. Connection failures are retried (``retries`` times, with
backoff) by redis-py; what still fails raises
:class:`~omniq_observe.exceptions.BackendUnavailableError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - depends on the environment
    _msg = "RedisBackend needs the redis extra: pip install 'omniq-observe[redis]'"
    from omniq_observe.exceptions import MissingExtraError

    raise MissingExtraError(_msg) from exc

from omniq_observe.backend._group_commit import GroupCommitter
from omniq_observe.backend._redis_config import URL_OPTIONS, check_settings, persistence_warning
from omniq_observe.backend._redis_groups import StreamGroups, stored_entries
from omniq_observe.backend._redis_scan import MARGIN_MS, StreamKeys, prune_older, query_stream
from omniq_observe.backend._redis_scripts import (
    APPEND_SCRIPT,
    HISTORY_SCRIPT,
    PRUNE_SCRIPT,
    id_str,
)
from omniq_observe.backend._url import safe_url, split_url_options
from omniq_observe.backend.base import (
    BaseEventStorage,
    Consumer,
    DeadLetter,
    Health,
    Page,
    Position,
    StoredEvent,
    as_utc,
    read_dead_letter,
)
from omniq_observe.exceptions import (
    BackendUnavailableError,
    StorageError,
)
from omniq_observe.models.event import TaskEvent, decode_event, encode_event, epoch_us

__all__ = ["SCHEMA_VERSION", "RedisBackend"]

# 2: entries carry ``t`` (the task id) and ids follow event time; version-1 entries are
# read as before, and prune leaves their index lists to expire.
SCHEMA_VERSION = 2

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
            member takes it over; a processor renews its batch
            while its handlers run.
        claim_interval: how often (seconds) a member looks for such entries.
        retries: connection retries per command, with backoff.
        socket_timeout: seconds one command may take.
        connect_timeout: seconds to connect.
        max_batch: events per script call in ``append``.
        client_name: the name its connections show in ``CLIENT LIST``.
        max_connections: the most connections open at once; more callers wait.
        dedup_window: how many recent event ids (at least; at most twice as many) an
            append checks so that a retried write stores nothing twice.

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
        client_name: str | None = None,
        max_connections: int = 16,
        dedup_window: int = 50_000,
    ) -> None:
        check_settings(prefix=prefix, max_len=max_len, history_ttl=history_ttl,
                       claim_idle=claim_idle, claim_interval=claim_interval,
                       socket_timeout=socket_timeout, connect_timeout=connect_timeout,
                       retries=retries, max_batch=max_batch, max_connections=max_connections,
                       dedup_window=dedup_window)
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
        self.client_name = client_name
        self.max_connections = max_connections
        self.dedup_window = dedup_window
        self._committer: GroupCommitter | None = None
        self.stream = f"{prefix}:events"
        self._task_prefix = f"{prefix}:task:"
        self._dead_key = f"{prefix}:dead"
        self._meta_key = f"{prefix}:meta"
        self._append_keys = [self.stream, f"{prefix}:recent", f"{prefix}:recent:old",
                             f"{prefix}:late"]
        self._keys = StreamKeys(self.stream, f"{prefix}:late", self._task_prefix)
        self._client: Any = None  # redis.asyncio.Redis, typed loosely: its replies vary
        self._scripts: dict[str, Any] = {}
        self._consumers = StreamGroups(self)
        self._closed = False

    @property
    def lease_seconds(self) -> float:
        """The storage contract's name for ``claim_idle``."""
        return self.claim_idle

    @lease_seconds.setter
    def lease_seconds(self, seconds: float) -> None:
        self.claim_idle = seconds

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBackend:
        """Build a backend from ``redis://host:port/db?prefix=x&claim_idle=30``.

        Our query parameters (``prefix``, ``max_len``, ``history_ttl``, ``claim_idle``,
        ``claim_interval``, ``retries``, ``socket_timeout``, ``connect_timeout``,
        ``max_batch``, ``client_name``, ``max_connections``, ``dedup_window``) become keyword
        arguments; ``options`` override them; any other
        parameter is passed on to redis-py.

        Raises:
            InvalidURLError: a parameter has the wrong type.
        """
        rest, kwargs = split_url_options(url, URL_OPTIONS)
        return cls(rest, **{**kwargs, **options})

    # -- connection ----------------------------------------------------------------------
    def client(self) -> Any:
        """The redis-py asyncio client (connected lazily, in the running loop).

        Raises:
            StorageError: the backend is closed.
        """
        if self._client is None:
            if self._closed:
                msg = f"RedisBackend({self.prefix!r}) is closed"
                raise StorageError(msg)
            retry = Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.5), self.retries)
            # A blocking pool: a burst of callers waits for a connection instead of failing.
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=self.max_connections,
                timeout=self.connect_timeout,
                retry=retry,
                retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.connect_timeout,
                client_name=self.client_name,
            )
            self._client = aioredis.Redis.from_pool(pool)
            self._scripts = {
                "append": self._client.register_script(APPEND_SCRIPT),
                "history": self._client.register_script(HISTORY_SCRIPT),
                "prune": self._client.register_script(PRUNE_SCRIPT),
            }
        return self._client

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            msg = f"Redis at {safe_url(self.url)} unavailable while {what}: {exc}"
            raise BackendUnavailableError(msg) from exc
        except RedisError as exc:
            msg = f"Redis {what} failed: {exc}"
            raise StorageError(msg) from exc

    # -- writing -------------------------------------------------------------------------
    async def append(self, events: Sequence[TaskEvent]) -> None:
        """Store events; concurrent calls share one round trip (group commit)."""
        if not events:
            return
        self.client()
        if self._committer is None:
            # One group: up to 10 script calls of ``max_batch`` events, pipelined.
            self._committer = GroupCommitter(self._write_events, 10 * self.max_batch)
        await self._committer.submit(events)

    async def _write_events(self, events: Sequence[TaskEvent]) -> None:
        client = self.client()
        head: list[Any] = [self._task_prefix, int(self.history_ttl * 1000), self.max_len or 0,
                           self.dedup_window, MARGIN_MS]
        calls = []
        for start in range(0, len(events), self.max_batch):
            args = head.copy()
            for event in events[start : start + self.max_batch]:
                args += (event.task_id, event.event_id, epoch_us(event.timestamp) // 1000,
                         encode_event(event))
            calls.append(args)
        script, keys = self._scripts["append"], self._append_keys
        with self._errors("appending events"):
            if len(calls) == 1:
                await script(keys=keys, args=calls[0])
                return
            pipe = client.pipeline(transaction=False)
            for args in calls:
                await script(keys=keys, args=args, client=pipe)
            await pipe.execute()

    # -- the log -------------------------------------------------------------------------
    async def read_after(self, position: Position | None, limit: int) -> list[StoredEvent]:
        start = "-" if position is None else f"({id_str(position)}"
        with self._errors("reading events"):
            entries = await self.client().xrange(self.stream, start, "+", count=limit)
        return stored_entries(entries)

    async def last_position(self) -> Position | None:
        with self._errors("reading the last position"):
            entries = await self.client().xrevrange(self.stream, "+", "-", count=1)
        return id_str(entries[0][0]) if entries else None

    async def commit_position(self, group: str, position: Position) -> None:
        with self._errors(f"committing the position of {group!r}"):
            await self._consumers.commit_position(group, id_str(position))

    async def get_position(self, group: str) -> Position | None:
        with self._errors(f"reading the position of {group!r}"):
            return await self._consumers.get_position(group)

    async def positions(self) -> dict[str, Position]:
        with self._errors("reading positions"):
            return dict(await self._consumers.positions())

    # -- processors (see _redis_groups) ----------------------------------------------------
    async def claim(self, consumer: Consumer, limit: int) -> list[StoredEvent]:
        with self._errors(f"claiming events for {consumer.group!r}"):
            return await self._consumers.claim(consumer, limit)

    async def ack(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        if batch:
            with self._errors(f"acknowledging events of {consumer.group!r}"):
                await self._consumers.ack(consumer, batch)

    async def renew(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        with self._errors(f"renewing the entries of {consumer.member!r}"):
            await self._consumers.renew(consumer, batch)

    async def release(self, consumer: Consumer) -> None:
        """Hand this member's unacknowledged entries to the other members at once."""
        if self._client is not None:
            with self._errors(f"releasing {consumer.member!r} of {consumer.group!r}"):
                await self._consumers.release(consumer)

    async def has_events_for(self, consumer: Consumer) -> bool:
        with self._errors(f"checking for events of {consumer.group!r}"):
            return (await self._consumers.next_after(consumer)) is None

    async def wait_for_events(self, consumer: Consumer, timeout: float) -> bool:
        """Block in ``XREAD`` until an entry after the group's last delivery arrives."""
        with self._errors(f"waiting for events of {consumer.group!r}"):
            return await self._consumers.wait(consumer, timeout)

    # -- dead letters --------------------------------------------------------------------
    async def record_dead_letter(self, dead: DeadLetter) -> None:
        fields = {
            "g": dead.group,
            "h": dead.handler,
            "err": dead.error,
            "n": str(dead.attempts),
            "p": id_str(dead.position),
            "e": dead.body,
        }
        with self._errors("recording a dead letter"):
            await self.client().xadd(self._dead_key, fields)

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        with self._errors("reading dead letters"):
            entries = await self.client().xrange(self._dead_key)
        found = []
        for _, f in entries:
            g = f[b"g"].decode()
            if group is None or g == group:
                found.append(
                    read_dead_letter(g, f[b"h"].decode(), f[b"err"].decode(), int(f[b"n"]),
                                     f[b"p"].decode(), f[b"e"])
                )
        return found

    # -- queries -------------------------------------------------------------------------
    async def task_history(self, task_id: str, limit: int = 1000) -> list[TaskEvent]:
        self.client()
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
        with self._errors("querying events"):
            return await query_stream(self.client(), self._keys, types=types,
                                      since=as_utc(since), until=as_utc(until),
                                      limit=limit, after=after)

    async def count(self) -> int:
        with self._errors("counting events"):
            return int(await self.client().xlen(self.stream))

    async def prune(
        self, *, older_than: datetime | None = None, max_events: int | None = None
    ) -> int:
        client = self.client()
        deleted = 0
        with self._errors("pruning events"):
            cutoff = as_utc(older_than)
            if cutoff is not None:
                deleted += await prune_older(client, self._keys, self._scripts["prune"], cutoff)
            if max_events is not None:
                deleted += int(
                    await client.xtrim(self.stream, maxlen=max_events, approximate=False)
                )
        return deleted

    async def health(self) -> Health:
        """Whether Redis answers; ``extra["warnings"]`` says when it keeps nothing on disk."""
        try:
            client = self.client()
            with self._errors("checking health"):
                await client.hsetnx(self._meta_key, "schema_version", SCHEMA_VERSION)
                pipe = client.pipeline(transaction=False)
                pipe.xlen(self.stream)
                pipe.hget(self._meta_key, "schema_version")
                length, version = await pipe.execute()
        except Exception as exc:
            return Health(ok=False, backend=self.backend_name, detail=str(exc))
        extra: dict[str, Any] = {"stream": self.stream, "events": int(length)}
        warning = await persistence_warning(client)
        if warning:
            extra["warnings"] = [warning]
        return Health(
            ok=True,
            backend=self.backend_name,
            detail=f"{safe_url(self.url)} {self.stream}: {length} events",
            schema_version=int(version),
            extra=extra,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._committer is not None:
            await self._committer.close()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
