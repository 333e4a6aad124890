"""Events in PostgreSQL: a table, task partitions leased to processors, LISTEN/NOTIFY to wake them.

Design (see also the README, "Choosing a storage backend"):

* ``omniq_events`` (bigserial ``id``, ``event_id`` unique, ``task_id``, ``event_type``,
  ``timestamp`` timestamptz, ``body`` the wire form as text, byte for byte), indexed for
  task history, type and time. The position of an event is its ``id``.
* **Appends are idempotent by ``event_id``.** Rows are COPied into a temporary table and
  inserted from there with ``ON CONFLICT (event_id) DO NOTHING``: an append retried after
  its commit's reply was lost (or by the logger's buffer) stores nothing twice.
* **Ids become visible in order.** Concurrent transactions may commit bigserial ids out
  of order, so a reader at "id > last" could pass an id that commits later. Writers
  therefore take a transaction-level advisory lock before drawing ids: appends commit one
  after another, and every reader sees ids as a gap-free-in-time prefix. Inside one
  process, concurrent ``append`` calls are grouped into one transaction (one COPY), so the
  lock costs one transaction per group, not per event.
* **Processor groups are routed by task.** Each event's ``part`` column holds the
  partition of its ``task_id`` (16 partitions, by CRC-32, as on every backend). The
  members of a group divide the partitions between them and hold each through a lease
  (``lease_seconds``, renewed while they work), so every event of one task goes to the
  same member and each member's pairing sees whole tasks. A member that leaves frees its
  partitions at once; one that dies leaves them to expire, then another member takes them
  over from the position acknowledged last. No two live members get the same event (see
  :mod:`._groups`).
* Appends ``NOTIFY`` a per-schema channel, and waiting processors ``LISTEN`` on a
  dedicated connection.
* The schema is created and migrated on first use; ``health()`` reports its version.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Any

try:
    # The extra's packages, imported here first so that a missing one names the extra.
    import psycopg
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    _msg = "PostgresBackend needs the postgres extra: pip install 'omniq-observe[postgres]'"
    from omniq_observe.exceptions import MissingExtraError

    raise MissingExtraError(_msg) from exc

from omniq_observe._validate import non_negative_int, positive_int, positive_seconds
from omniq_observe.backend._group_commit import GroupCommitter
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
from omniq_observe.backend.postgres._groups import Groups, stored_rows
from omniq_observe.backend.postgres._listen import Listener
from omniq_observe.backend.postgres._pool import PgConnections, rejected_events
from omniq_observe.backend.postgres._schema import (
    COPY_STAGE,
    CREATE_STAGE,
    SCHEMA_VERSION,
    STAGE,
    WIRE,
    copy_payload,
    lock_key,
    valid_identifier,
)
from omniq_observe.models.event import TaskEvent, decode_event

__all__ = ["SCHEMA_VERSION", "PostgresBackend"]

_URL_OPTIONS: dict[str, type] = {
    "schema": str,
    "lease_seconds": float,
    "pool_size": int,
    "retries": int,
    "connect_timeout": float,
    "max_batch": int,
}


class PostgresBackend(BaseEventStorage):
    """Events in PostgreSQL tables; processors of one name share them by task partitions.

    One instance belongs to one event loop (it connects lazily, on first use).

    Args:
        dsn: a libpq connection string or URL (``postgresql://user@host/db``).
        schema: the schema holding the tables (created on first use).
        lease_seconds: how long a member holds its partitions without renewing them
            before another member may take them over; a processor renews them while its
            handlers run and while it waits for events.
        pool_size: the most connections the pool opens (plus one for LISTEN).
        retries: how often an operation is retried after a lost connection.
        connect_timeout: seconds to wait for a connection before failing.
        max_batch: the most events one append transaction takes.

    Raises:
        ConfigurationError: a setting is invalid.
    """

    backend_name = "postgres"

    def __init__(
        self,
        dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres",
        *,
        schema: str = "omniq",
        lease_seconds: float = 60.0,
        pool_size: int = 4,
        retries: int = 5,
        connect_timeout: float = 5.0,
        max_batch: int = 5000,
    ) -> None:
        self.schema = valid_identifier("schema", schema)
        self.lease_seconds = positive_seconds("lease_seconds", lease_seconds)
        self.connect_timeout = positive_seconds("connect_timeout", connect_timeout)
        self.pool_size = positive_int("pool_size", pool_size)
        self.retries = non_negative_int("retries", retries)
        self.max_batch = positive_int("max_batch", max_batch)
        self.channel = f"omniq_{schema}"
        self._events, self._dead = f"{schema}.omniq_events", f"{schema}.omniq_dead_letters"
        self._groups = Groups(schema, self.channel, self.lease_seconds)
        self._lock_append = (
            f"SELECT pg_advisory_xact_lock({lock_key(schema, 'append')}), "
            f"pg_notify('{self.channel}', '')"
        )
        self._insert_staged = (
            f"INSERT INTO {self._events} (event_id, task_id, event_type, timestamp, part, body) "
            f"SELECT event_id, task_id, event_type, timestamp, part, body FROM {STAGE} ORDER BY n "
            "ON CONFLICT (event_id) DO NOTHING"
        )
        self._staged: weakref.WeakSet[Any] = weakref.WeakSet()  # connections with a stage
        self._db = PgConnections(dsn, self.schema, pool_size, retries, self.connect_timeout)
        self._committer: GroupCommitter | None = None
        self._listener: Listener | None = None
        self._closed = False

    @property
    def dsn(self) -> str:
        """The connection string (as given, password included)."""
        return self._db.dsn

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresBackend:
        """Build a backend from ``postgresql://user@host/db?schema=x&lease_seconds=30``.

        Our query parameters (``schema``, ``lease_seconds``, ``pool_size``, ``retries``,
        ``connect_timeout``, ``max_batch``) become keyword arguments; ``options`` override
        them; other parameters stay in the DSN for libpq.

        Raises:
            InvalidURLError: a parameter has the wrong type.
        """
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        dsn, kwargs = split_url_options(url, _URL_OPTIONS)
        return cls(dsn, **{**kwargs, **options})

    # -- writing -------------------------------------------------------------------------
    async def append(self, events: Sequence[TaskEvent]) -> None:
        """Store events; concurrent calls share one transaction (group commit)."""
        if not events:
            return
        await self._db.open()
        if self._committer is None:
            self._committer = GroupCommitter(self._write_events, self.max_batch)
        await self._committer.submit(events)

    async def _write_events(self, events: list[TaskEvent]) -> None:
        await self._db.run(f"appending {len(events)} event(s)",
                           lambda c: self._insert(c, events),
                           data_error=lambda exc: rejected_events(events, exc))

    async def _insert(
        self, conn: Any, events: Sequence[TaskEvent], *, own_transaction: bool = True
    ) -> None:
        """Append ``events``; in a transaction of its own unless the caller has one open."""
        payload = copy_payload(events)
        cur = conn.cursor()
        # The lock makes ids commit in order (see the module docstring); the NOTIFY goes
        # out on commit. Every value here is ours (an integer, a checked identifier), so
        # the statements need no parameters and travel together: three round trips.
        first = self._lock_append
        if conn not in self._staged:
            first = f"{CREATE_STAGE}; {first}"
        await cur.execute(f"BEGIN; {first}" if own_transaction else first)
        self._staged.add(conn)
        try:
            async with cur.copy(COPY_STAGE) as copy:
                await copy.write(payload)
            finish = f"{self._insert_staged}; COMMIT" if own_transaction else self._insert_staged
            await cur.execute(finish)
        except BaseException:
            self._staged.discard(conn)  # a rolled-back CREATE leaves no table behind
            if own_transaction:
                with contextlib.suppress(psycopg.Error):  # a lost connection: the pool drops it
                    await conn.execute("ROLLBACK")
            raise

    # -- the log -------------------------------------------------------------------------
    async def read_after(self, position: Position | None, limit: int) -> list[StoredEvent]:
        rows = await self._db.fetch(
            "reading events",
            f"SELECT id, {WIRE} FROM {self._events} WHERE id > %s ORDER BY id LIMIT %s",
            (0 if position is None else int(position), limit),
        )
        return stored_rows(rows)

    async def last_position(self) -> Position | None:
        sql = f"SELECT max(id) FROM {self._events}"
        rows = await self._db.fetch("reading the last position", sql)
        return None if rows[0][0] is None else int(rows[0][0])

    async def commit_position(self, group: str, position: Position) -> None:
        await self._db.run(f"committing the position of {group!r}",
                           lambda c: self._groups.commit_position(c, group, int(position)))

    async def get_position(self, group: str) -> Position | None:
        return await self._db.run(f"reading the position of {group!r}",
                                  lambda c: self._groups.get_position(c, group))

    async def positions(self) -> dict[str, Position]:
        return dict(await self._db.run("reading positions", self._groups.positions))

    # -- processor groups (see _groups) --------------------------------------------------
    async def claim(self, consumer: Consumer, limit: int) -> list[StoredEvent]:
        return await self._db.run(f"claiming events for {consumer.group!r}",
                                  lambda c: self._groups.claim(c, consumer, limit))

    async def ack(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        if batch:
            await self._db.run(f"acknowledging events of {consumer.group!r}",
                               lambda c: self._groups.ack(c, consumer))

    async def renew(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        await self._db.run(f"renewing the lease of {consumer.member!r}",
                           lambda c: self._groups.renew(c, consumer))

    async def release(self, consumer: Consumer) -> None:
        """Free this member's partitions now, so that other members take them at once."""
        if self._db.opened:
            await self._db.run(f"releasing {consumer.member!r} of {consumer.group!r}",
                               lambda c: self._groups.release(c, consumer))

    async def has_events_for(self, consumer: Consumer) -> bool:
        return await self._db.run(f"checking for events of {consumer.group!r}",
                                  lambda c: self._groups.has_events_for(c, consumer))

    async def wait_for_events(self, consumer: Consumer, timeout: float) -> bool:
        """Wait for a NOTIFY from an append (or a member joining or leaving) on this
        schema's channel; a member waiting longer than a third of its lease renews it."""
        if self._listener is None:
            await self._db.open()
            self._listener = Listener(self.dsn, self.channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._listener.ready(min(timeout, self.connect_timeout))
        while True:
            generation = self._listener.generation
            if await self.has_events_for(consumer):
                return True
            # A wake-up may be spurious (a reconnect wakes everyone): check again after it.
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if not await self._listener.wait(generation, min(remaining, self._groups.renew_every)):
                await self._db.run(f"renewing the lease of {consumer.member!r}",
                                   lambda c: self._groups.renew_if_due(c, consumer))

    # -- dead letters --------------------------------------------------------------------
    async def record_dead_letter(self, dead: DeadLetter) -> None:
        args = (dead.group, dead.handler, dead.error, dead.attempts, int(dead.position),
                dead.body.decode("utf-8", "replace"))

        async def insert(conn: Any) -> None:
            await conn.execute(
                f"INSERT INTO {self._dead} (grp, handler, error, attempts, position, event) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                args,
            )

        await self._db.run("recording a dead letter", insert)

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        sql = f"SELECT grp, handler, error, attempts, position, event FROM {self._dead}"
        args: tuple[str, ...] = ()
        if group is not None:
            sql += " WHERE grp = %s"
            args = (group,)
        rows = await self._db.fetch("reading dead letters", sql + " ORDER BY id", args)
        return [read_dead_letter(g, h, err, n, int(pos), body) for g, h, err, n, pos, body in rows]

    # -- queries -------------------------------------------------------------------------
    async def task_history(self, task_id: str, limit: int = 1000) -> list[TaskEvent]:
        rows = await self._db.fetch(
            f"reading the history of task {task_id!r}",
            f"SELECT {WIRE} FROM {self._events} WHERE task_id = %s ORDER BY id LIMIT %s",
            (task_id.replace("\x00", "\ufffd"), limit),
        )
        return [e for e in (decode_event(body) for (body,) in rows) if e.task_id == task_id]

    async def query(
        self,
        *,
        event_types: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        after: Position | None = None,
    ) -> Page:
        clauses: list[str] = ["id > %s"]
        args: list[Any] = [0 if after is None else int(after)]
        if event_types:
            clauses.append("event_type = ANY(%s)")
            args.append([t.upper() for t in event_types])
        if since is not None:
            clauses.append("timestamp >= %s")
            args.append(as_utc(since))
        if until is not None:
            clauses.append("timestamp < %s")
            args.append(as_utc(until))
        args.append(limit + 1)
        rows = await self._db.fetch(
            "querying events",
            f"SELECT id, {WIRE} FROM {self._events} WHERE {' AND '.join(clauses)} "
            "ORDER BY id LIMIT %s",
            args,
        )
        events = stored_rows(rows[:limit])
        more = len(rows) > limit
        return Page(events, events[-1].position if more and events else None)

    async def count(self) -> int:
        rows = await self._db.fetch("counting events", f"SELECT count(*) FROM {self._events}")
        return int(rows[0][0])

    async def prune(
        self, *, older_than: datetime | None = None, max_events: int | None = None
    ) -> int:
        cutoff = as_utc(older_than)

        async def prune(conn: Any) -> int:
            deleted = 0
            async with conn.transaction():
                if cutoff is not None:
                    cur = await conn.execute(
                        f"DELETE FROM {self._events} WHERE timestamp < %s", (cutoff,)
                    )
                    deleted += cur.rowcount
                if max_events is not None:
                    cur = await conn.execute(
                        f"DELETE FROM {self._events} WHERE id <= (SELECT id FROM "
                        f"{self._events} ORDER BY id DESC OFFSET %s LIMIT 1)",
                        (max_events,),
                    )
                    deleted += cur.rowcount
            return deleted

        return await self._db.run("pruning events", prune)

    async def health(self) -> Health:
        try:
            rows = await self._db.fetch(
                "checking health",
                f"SELECT value FROM {self.schema}.omniq_meta WHERE key = 'schema_version'",
            )
        except Exception as exc:
            return Health(ok=False, backend=self.backend_name, detail=str(exc))
        return Health(
            ok=True,
            backend=self.backend_name,
            detail=f"{safe_url(self.dsn)} schema {self.schema}",
            schema_version=int(rows[0][0]) if rows else None,
            extra={"schema": self.schema},
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._committer is not None:
            await self._committer.close()
        if self._listener is not None:
            await self._listener.close()
        await self._db.close()

