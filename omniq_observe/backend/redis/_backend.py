"""Events in Redis Streams, one per task partition, shared by processors in groups.

* The events of one task go to the stream of its partition (``partitions`` streams, by a
  hash of ``task_id``, see ``_core``). Entry ids are unique over the streams and grow in
  append order, so the streams merged by id are the log: ``read_after``, ``query`` and
  ``tail`` read it in that order, and a position is an entry id.
* ``append`` writes a batch with one Lua script call per ``max_batch`` events (calls
  pipelined): each event is an ``XADD`` to its partition's stream and its id is pushed onto
  the task's index list ``<prefix>:task:<task_id>`` (TTL ``history_ttl``), which makes
  ``task_history`` one round trip. The script skips an event whose ``event_id`` is in the
  dedup state (``<prefix>:dedup``: the last ``dedup_window`` to twice that many ids, in
  small compact hashes, see ``_scripts``), so an append retried after its reply was lost
  stores nothing twice. Entry ids follow
  event time (see ``_log``), so ``query(since=)`` and ``prune`` seek instead of scanning.
* A processor name is a group; its members divide the partitions through leases and read
  each held partition as a Redis consumer group (see ``_groups``), so one task's events
  all go to one member. ``wait_for_events`` blocks in ``XREAD``, so a waiting processor
  wakes within milliseconds of a new event.
* Retention: ``max_len`` trims every stream on every write (``MAXLEN ~``, a share of
  ``max_len`` each); ``prune`` trims with ``MINID`` (removing the pruned ids from the task
  index lists and from the dedup state).
* The number of partitions is fixed when a store is made (recorded in ``<prefix>:meta``). A
  store made before partitions existed holds one stream, ``<prefix>:events``, and is used
  as a store of one partition.

Delivery is at-least-once. Connection failures are retried (``retries`` times, with
backoff) by redis-py; what still fails raises
:class:`~omniq_observe.exceptions.BackendUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import zlib
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
from omniq_observe.backend._partitions import PARTITIONS
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
from omniq_observe.backend.redis._config import (
    URL_OPTIONS,
    check_settings,
    persistence_warning,
)
from omniq_observe.backend.redis._core import (
    Keys,
    dedup_id,
    id_str,
    parse_stream_id,
    raw_reply,
    stored_entries,
)
from omniq_observe.backend.redis._groups import StreamGroups
from omniq_observe.backend.redis._log import (
    MARGIN_MS,
    prune_newest,
    prune_older,
    query_log,
    read_merged,
)
from omniq_observe.backend.redis._scripts import (
    APPEND_SCRIPT,
    HISTORY_SCRIPT,
    LEASE_SCRIPT,
    PRUNE_SCRIPT,
)
from omniq_observe.exceptions import BackendUnavailableError, ConfigurationError, StorageError
from omniq_observe.models.event import TaskEvent, decode_event, encode_event, epoch_us

__all__ = ["SCHEMA_VERSION", "RedisBackend"]

# 2: entries carry ``t`` (the task id) and ids follow event time; version-1 entries are
# read as before, and prune leaves their index lists to expire.
SCHEMA_VERSION = 2
# The append script gets an event's time (ms) and partition as one number, ms * 1024 +
# partition, which Lua's doubles hold exactly within +-2**53: times are clamped to +-2**43
# ms (the years 1691 to 2248) for it.
_PACKED_MS = 2**43
_SCRIPTS = {"append": APPEND_SCRIPT, "history": HISTORY_SCRIPT, "lease": LEASE_SCRIPT,
            "prune": PRUNE_SCRIPT}


class RedisBackend(BaseEventStorage):
    """Events in Redis Streams; processors of one name share them as a group, task-routed.

    One instance belongs to one event loop (it connects lazily, on first use).

    Args:
        url: the Redis URL (``redis://host:6379/0``, ``rediss://...``).
        prefix: the prefix of every key, so several deployments share one Redis.
        max_len: trim the streams to about this many events in all on every write
            (``None``: keep everything until ``prune``).
        history_ttl: seconds a task's history index lives after its last event.
        claim_idle: seconds a group member's leases last: a member that stops renewing
            them (it died) has its partitions and what it held taken over after this; a
            processor renews them while its handlers run.
        claim_interval: how often (seconds) a member renews its leases and the members
            rebalance the partitions (at most a third of ``claim_idle``).
        retries: connection retries per command, with backoff.
        socket_timeout: seconds one command may take.
        connect_timeout: seconds to connect.
        max_batch: events per script call in ``append``.
        client_name: the name its connections show in ``CLIENT LIST``.
        max_connections: the most connections open at once; more callers wait.
        dedup_window: how many recent event ids (at least; at most twice as many) an
            append checks so that a retried write stores nothing twice (the ids of
            pruned events are forgotten).
        partitions: the number of task partitions (streams) of a new store (``None``:
            16); an existing store keeps its own, and a different number raises.

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
        partitions: int | None = None,
    ) -> None:
        check_settings(prefix=prefix, max_len=max_len, partitions=partitions,
                       history_ttl=history_ttl, claim_idle=claim_idle,
                       claim_interval=claim_interval, socket_timeout=socket_timeout,
                       connect_timeout=connect_timeout, retries=retries, max_batch=max_batch,
                       max_connections=max_connections, dedup_window=dedup_window)
        self.url, self.prefix, self.client_name = url, prefix, client_name
        self._set_timing(history_ttl, claim_idle, claim_interval, socket_timeout,
                         connect_timeout)
        self._set_limits(max_len, retries, max_batch, max_connections, dedup_window,
                         partitions)
        self._set_keys(prefix)

    def _set_timing(self, history_ttl: float, claim_idle: float, claim_interval: float,
                    socket_timeout: float, connect_timeout: float) -> None:
        self.history_ttl = float(history_ttl)
        self.claim_idle = float(claim_idle)
        self.claim_interval = float(claim_interval)
        self.socket_timeout = float(socket_timeout)
        self.connect_timeout = float(connect_timeout)

    def _set_limits(self, max_len: int | None, retries: int, max_batch: int,
                    max_connections: int, dedup_window: int, partitions: int | None) -> None:
        self.max_len, self.max_batch, self.partitions = max_len, max_batch, partitions
        self.retries, self.max_connections = retries, max_connections
        self.dedup_window = dedup_window

    def _set_keys(self, prefix: str) -> None:
        """The keys that do not depend on the partitions, and the connection state."""
        self.stream = f"{prefix}:events"  # a store of one partition; else <stream>:<p>
        self._dead_key = f"{prefix}:dead"
        self._meta_key = f"{prefix}:meta"
        # The recent-id sets of stores from before the dedup state: gone at its first turn.
        self._recent_keys = [f"{prefix}:recent", f"{prefix}:recent:old"]
        self._keys: Keys | None = None  # known once the store was opened
        self._opening: asyncio.Future[Keys] | None = None
        self._committer: GroupCommitter | None = None
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
        ``max_batch``, ``client_name``, ``max_connections``, ``dedup_window``,
        ``partitions``) become keyword arguments; ``options`` override them; any other
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
            self._client.set_response_callback("XREADGROUP", raw_reply)
            self._scripts = {name: self._client.register_script(source)
                             for name, source in _SCRIPTS.items()}
        return self._client

    def script(self, name: str) -> Any:
        """The registered Lua script ``name`` (``append``, ``history``, ``lease``, ``prune``)."""
        self.client()
        return self._scripts[name]

    @property
    def keys(self) -> Keys:
        """The store's keys, once it was opened (see :meth:`_open`)."""
        if self._keys is None:
            msg = f"RedisBackend({self.prefix!r}) was not opened yet"
            raise StorageError(msg)
        return self._keys

    async def _open(self) -> Keys:
        """The store's keys: its number of partitions is read (or recorded) once.

        Concurrent first callers share one read and go on in the order they came, so
        appends keep their order.
        """
        if self._keys is not None:
            return self._keys
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._read_keys())
        opening = self._opening
        try:
            self._keys = await asyncio.shield(opening)
        except BaseException:
            if opening.done():
                self._opening = None  # failed: the next caller tries again
            raise
        return self._keys

    async def _read_keys(self) -> Keys:
        with self._errors("opening the store"):
            count = await self._stored_partitions()
        if self.partitions is not None and self.partitions != count:
            msg = (f"partitions={self.partitions} but the store under prefix "
                   f"{self.prefix!r} has {count}; open it with partitions={count} "
                   "(or leave partitions out), or use a new prefix")
            raise ConfigurationError(msg, setting="partitions", value=self.partitions)
        return Keys(self.prefix, count)

    async def _stored_partitions(self) -> int:
        """The store's number of partitions; recorded now for a new store."""
        client = self.client()
        recorded = await client.hget(self._meta_key, "partitions")
        if recorded is None:
            made_before = await client.type(self.stream) == b"stream"  # before partitions
            count = 1 if made_before else self.partitions or PARTITIONS
            await client.hsetnx(self._meta_key, "partitions", count)
            recorded = await client.hget(self._meta_key, "partitions")
        return int(recorded)

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
        if self._keys is None:  # a coroutine call per event costs
            await self._open()
        if self._committer is None:
            # One group: up to 10 script calls of ``max_batch`` events, pipelined.
            self._committer = GroupCommitter(self._write_events, 10 * self.max_batch)
        await self._committer.submit(events)

    async def _write_events(self, events: Sequence[TaskEvent]) -> None:
        client, keys = self.client(), self.keys
        count = keys.partitions
        per_stream = 0 if self.max_len is None else math.ceil(self.max_len / count)
        head: list[Any] = [keys.task_prefix, int(self.history_ttl * 1000), per_stream,
                           self.dedup_window, MARGIN_MS, self.max_len or 0]
        calls = []
        for start in range(0, len(events), self.max_batch):
            args = head.copy()
            for event in events[start : start + self.max_batch]:
                ms = min(max(epoch_us(event.timestamp) // 1000, -_PACKED_MS), _PACKED_MS - 1)
                task = event.task_id.encode()  # bytes: redis-py passes them as they are
                args += (task, dedup_id(event.event_id),
                         ms << 10 | zlib.crc32(task) % count,  # as partition_of
                         encode_event(event))
            calls.append(args)
        script = self._scripts["append"]
        script_keys = [keys.dedup, keys.late, keys.last_id, *self._recent_keys, *keys.streams]
        with self._errors("appending events"):
            if len(calls) == 1:
                await script(keys=script_keys, args=calls[0])
                return
            pipe = client.pipeline(transaction=False)
            for args in calls:
                await script(keys=script_keys, args=args, client=pipe)
            await pipe.execute()

    # -- the log -------------------------------------------------------------------------
    async def read_after(self, position: Position | None, limit: int) -> list[StoredEvent]:
        keys = await self._open()
        start = "-" if position is None else f"({id_str(position)}"
        with self._errors("reading events"):
            tagged = await read_merged(self.client(), keys.streams, start, "+", limit)
        return stored_entries([entry for _, entry in tagged])

    async def last_position(self) -> Position | None:
        keys = await self._open()
        with self._errors("reading the last position"):
            pipe = self.client().pipeline(transaction=False)
            for stream in keys.streams:
                pipe.xrevrange(stream, "+", "-", count=1)
            lasts = [id_str(entries[0][0]) for entries in await pipe.execute() if entries]
        return max(lasts, key=parse_stream_id) if lasts else None

    async def commit_position(self, group: str, position: Position) -> None:
        await self._open()
        with self._errors(f"committing the position of {group!r}"):
            await self._consumers.commit_position(group, id_str(position))

    async def get_position(self, group: str) -> Position | None:
        await self._open()
        with self._errors(f"reading the position of {group!r}"):
            return await self._consumers.get_position(group)

    async def positions(self) -> dict[str, Position]:
        await self._open()
        with self._errors("reading positions"):
            return dict(await self._consumers.positions())

    # -- processors (see _groups) --------------------------------------------------------
    async def claim(self, consumer: Consumer, limit: int) -> list[StoredEvent]:
        if self._keys is None:
            await self._open()
        with self._errors(f"claiming events for {consumer.group!r}"):
            return await self._consumers.claim(consumer, limit)

    async def ack(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        if batch:
            if self._keys is None:
                await self._open()
            with self._errors(f"acknowledging events of {consumer.group!r}"):
                await self._consumers.ack(consumer, batch)

    async def renew(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        await self._open()
        with self._errors(f"renewing the leases of {consumer.member!r}"):
            await self._consumers.renew(consumer, batch)

    async def release(self, consumer: Consumer) -> None:
        """Hand this member's partitions, and what it holds there, to the others at once."""
        if self._client is not None and self._keys is not None:
            with self._errors(f"releasing {consumer.member!r} of {consumer.group!r}"):
                await self._consumers.release(consumer)

    async def has_events_for(self, consumer: Consumer) -> bool:
        await self._open()
        with self._errors(f"checking for events of {consumer.group!r}"):
            return await self._consumers.has_events(consumer)

    async def wait_for_events(self, consumer: Consumer, timeout: float) -> bool:
        """Block in ``XREAD`` until an entry the member could claim arrives."""
        await self._open()
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
        keys = await self._open()
        with self._errors(f"reading the history of task {task_id!r}"):
            bodies = await self.script("history")(
                keys=[keys.stream_of(task_id), keys.task_prefix + task_id], args=[limit]
            )
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
        keys = await self._open()
        types = {t.upper() for t in event_types} if event_types else None
        with self._errors("querying events"):
            return await query_log(self.client(), keys, types=types, since=as_utc(since),
                                   until=as_utc(until), limit=limit, after=after)

    async def count(self) -> int:
        keys = await self._open()
        with self._errors("counting events"):
            return await self._count(keys)

    async def _count(self, keys: Keys) -> int:
        pipe = self.client().pipeline(transaction=False)
        for stream in keys.streams:
            pipe.xlen(stream)
        return sum(int(n) for n in await pipe.execute())

    async def prune(
        self, *, older_than: datetime | None = None, max_events: int | None = None
    ) -> int:
        keys = await self._open()
        client, script = self.client(), self.script("prune")
        deleted = 0
        with self._errors("pruning events"):
            cutoff = as_utc(older_than)
            if cutoff is not None:
                deleted += await prune_older(client, keys, script, cutoff)
            if max_events is not None:
                deleted += await prune_newest(client, keys, script, max_events)
        return deleted

    async def health(self) -> Health:
        """Whether Redis answers; ``extra["warnings"]`` says when it keeps nothing on disk."""
        try:
            keys = await self._open()
            client = self.client()
            with self._errors("checking health"):
                await client.hsetnx(self._meta_key, "schema_version", SCHEMA_VERSION)
                version = await client.hget(self._meta_key, "schema_version")
                length = await self._count(keys)
        except Exception as exc:
            return Health(ok=False, backend=self.backend_name, detail=str(exc))
        extra: dict[str, Any] = {"stream": self.stream, "partitions": keys.partitions,
                                 "events": length}
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
