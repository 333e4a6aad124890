"""Embedded storage in one SQLite file: the default backend.

* WAL mode, so readers in other processes never block the writer.
* Group commit: appends from many coroutines (and threads, and event loops) queue up for
  one writer thread, which writes everything waiting in one transaction and then resumes
  each caller. ``append`` returns only after its transaction committed.
* Durability: with ``synchronous="NORMAL"`` (the default) a committed transaction is in the
  WAL file before ``append`` returns, so ``kill -9`` loses nothing; only a power loss can
  drop the last transactions. ``synchronous="FULL"`` also survives that, at a cost.
* Reads run on a reader thread with their own connection, never on the event loop.
* Checkpoints (copying the WAL back into the database file) run on a third thread, so a
  commit never waits for one.

The writer and checkpointer threads live in :mod:`._writer`, the schema and the
hot-path statements in :mod:`._sql`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from omniq_observe._validate import positive_int, positive_seconds
from omniq_observe.backend.base import (
    BaseEventStorage,
    Consumer,
    DeadLetter,
    Health,
    Page,
    Position,
    StoredEvent,
    as_utc,
    check_prune_limit,
    decode_stored,
    epoch_us,
    read_dead_letter,
)
from omniq_observe.backend.sqlite._groups import (
    GROUP_SCHEMA,
    Groups,
    set_group_position,
)
from omniq_observe.backend.sqlite._prune import (
    keep_newest_from,
    prune_in_chunks,
    prune_older,
    prune_through,
)
from omniq_observe.backend.sqlite._sql import (
    committed_position,
    connect,
    health_probe,
    insert_events,
    prepare,
    query_rows,
    quick_check,
    select_after,
)
from omniq_observe.backend.sqlite._writer import GroupWriter, WriteFn
from omniq_observe.backend.sqlite._writer import WriteItem as _Item
from omniq_observe.exceptions import ConfigurationError, StorageError
from omniq_observe.models.event import TaskEvent, decode_event

__all__ = ["SCHEMA_VERSION", "SQLiteBackend"]

SCHEMA_VERSION = 2
_T = TypeVar("_T")


class SQLiteBackend(BaseEventStorage):
    """Events in one SQLite file, shared by loggers and processors in any process.

    Args:
        path: the database file; created with its folder's existing permissions.
        synchronous: SQLite's ``synchronous`` pragma, ``"NORMAL"`` or ``"FULL"``.
        busy_timeout: seconds to wait for another process's write lock.
        max_batch: the most events one group-commit transaction takes.
        lease_seconds: how long a processor holds its partitions of a group without
            renewing them (it renews at every batch); a killed processor's partitions
            go to the other members of its group after this long.

    Raises:
        ConfigurationError: a setting is invalid.
    """

    backend_name = "sqlite"
    can_append_blocking = True
    poll_interval = 0.01

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
        max_batch: int = 5000,
        lease_seconds: float = 30.0,
    ) -> None:
        if str(synchronous).upper() not in {"NORMAL", "FULL"}:
            msg = f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}"
            raise ConfigurationError(msg, setting="synchronous", value=synchronous)
        if not isinstance(path, (str, Path)) or not str(path):
            msg = f"path must name a file, got {path!r}"
            raise ConfigurationError(msg, setting="path", value=path)
        self.busy_timeout = positive_seconds("busy_timeout", busy_timeout)
        self.max_batch = positive_int("max_batch", max_batch)
        self.lease_seconds = positive_seconds("lease_seconds", lease_seconds)
        self.path = Path(path)
        self.synchronous = str(synchronous).upper()
        self._groups = Groups(self.lease_seconds)
        # True while this instance's processors each hold their whole group alone.
        self.read_ahead = False
        # ``_transaction`` is looked up at each commit (tests patch it to count commits).
        self._group = GroupWriter(
            self.path, max_batch, self._connect, lambda conn, items: _transaction(conn, items)
        )
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    # -- connections and threads ---------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        """Open and set up a connection; one that fails its setup is closed at once."""
        return connect(self.path, self.busy_timeout, self.synchronous)

    def _ensure_started(self) -> None:
        if self._group.started and not self._closed:
            return
        with self._start_lock:
            if self._closed:
                msg = f"SQLiteBackend({str(self.path)!r}) is closed"
                raise StorageError(msg)
            if self._group.started:
                return
            try:
                conn = self._connect()
            except sqlite3.Error as exc:
                msg = f"cannot open SQLite database {str(self.path)!r}: {exc}"
                raise StorageError(msg) from exc
            try:
                prepare(conn, GROUP_SCHEMA, SCHEMA_VERSION)
            except sqlite3.Error as exc:
                conn.close()
                msg = f"cannot open SQLite database {str(self.path)!r}: {exc}"
                raise StorageError(msg) from exc
            self._reader = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="omniq-sqlite-read"
            )
            self._group.start(conn)

    async def _write(self, fn: WriteFn) -> Any:
        """Run ``fn(conn)`` in the next group-commit transaction; return its result."""
        self._ensure_started()
        return await self._group.write(fn)

    def write_blocking(self, fn: WriteFn | None, rows: Sequence[TaskEvent] = ()) -> Any:
        """Run ``fn(conn)`` (or store ``rows``) in the next transaction, from sync code."""
        self._ensure_started()
        return self._group.write_blocking(fn, rows)

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        self._ensure_started()
        assert self._reader is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._read_in_thread, fn)

    def _read_in_thread(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._read_conn is None:
            self._read_conn = self._connect()
        try:
            return fn(self._read_conn)
        except sqlite3.Error as exc:
            msg = f"SQLite read from {str(self.path)!r} failed: {exc}"
            raise StorageError(msg) from exc

    # -- writing -------------------------------------------------------------------------
    async def append(self, events: Sequence[TaskEvent]) -> None:
        """Store ``events``; return once their transaction has committed.

        Appends made by many coroutines during one turn of the event loop travel to the
        writer thread together, and it writes whatever is waiting in one transaction.
        """
        if not events:
            return
        if not self._group.started or self._closed:
            self._ensure_started()
        await self._group.enqueue(events)

    def append_blocking(self, events: Sequence[TaskEvent]) -> None:
        """Store events from sync code without an event loop (used by ``EventLogger``)."""
        if events:
            self.write_blocking(None, events)

    # -- the log -------------------------------------------------------------------------
    async def read_after(self, position: Position | None, limit: int) -> list[StoredEvent]:
        after = -1 if position is None else int(position)
        return await self._read(lambda c: select_after(c, after, limit))

    # -- processor groups (see _groups) ------------------------------------------------
    async def claim(self, consumer: Consumer, limit: int) -> list[StoredEvent]:
        """Take this member's share of the group's partitions; read their next events."""
        groups = self._groups
        batch: list[StoredEvent] = await self._write(
            lambda c: groups.claim(c, consumer, limit, _now_us())
        )
        self.read_ahead = groups.read_ahead
        return batch

    async def ack(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        """Move the member's partitions (and the group's position) past ``batch``."""
        if batch:
            groups = self._groups
            await self._write(lambda c: groups.ack(c, consumer, batch, _now_us()))
            self.read_ahead = groups.read_ahead

    async def renew(self, consumer: Consumer, batch: Sequence[StoredEvent]) -> None:
        await self._write(lambda c: self._groups.renew(c, consumer, _now_us()))

    async def release(self, consumer: Consumer) -> None:
        """Leave the group: the other members take this one's partitions at once."""
        if not self._closed:
            await self._write(lambda c: self._groups.release(c, consumer))
            self.read_ahead = self._groups.read_ahead

    async def has_events_for(self, consumer: Consumer) -> bool:
        return await self._read(lambda c: self._groups.has_events_for(c, consumer, _now_us()))

    async def last_position(self) -> Position | None:
        row = await self._read(
            lambda c: c.execute("SELECT max(position) FROM omniq_events").fetchone()
        )
        return None if row[0] is None else int(row[0])

    async def commit_position(self, group: str, position: Position) -> None:
        """Set the group's position (and every partition's): an explicit move, either way."""
        await self._write(lambda c: set_group_position(c, group, int(position), _now_us()))

    async def get_position(self, group: str) -> Position | None:
        position = await self._read(lambda c: committed_position(c, group))
        return None if position < 0 else position

    async def positions(self) -> dict[str, Position]:
        rows = await self._read(
            lambda c: c.execute("SELECT grp, position FROM omniq_positions").fetchall()
        )
        return {grp: int(pos) for grp, pos in rows}

    # -- dead letters --------------------------------------------------------------------
    async def record_dead_letter(self, dead: DeadLetter) -> None:
        row = (dead.group, dead.handler, dead.error, dead.attempts, int(dead.position))
        body = dead.body

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO omniq_dead_letters (grp, handler, error, attempts, position, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (*row, body),
            )

        await self._write(insert)

    async def dead_letters(self, group: str | None = None) -> list[DeadLetter]:
        sql = "SELECT grp, handler, error, attempts, position, body FROM omniq_dead_letters"
        args: tuple[str, ...] = ()
        if group is not None:
            sql += " WHERE grp = ?"
            args = (group,)
        rows = await self._read(lambda c: c.execute(sql + " ORDER BY id", args).fetchall())
        return [read_dead_letter(g, h, err, n, int(pos), body) for g, h, err, n, pos, body in rows]

    # -- queries -------------------------------------------------------------------------
    async def task_history(self, task_id: str, limit: int = 1000) -> list[TaskEvent]:
        sql = "SELECT body FROM omniq_events WHERE task_id = ? ORDER BY position LIMIT ?"
        rows = await self._read(lambda c: c.execute(sql, (task_id, limit)).fetchall())
        return [decode_event(body) for (body,) in rows]

    async def query(
        self,
        *,
        event_types: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        after: Position | None = None,
    ) -> Page:
        types = [t.upper() for t in event_types] if event_types else None
        window = (
            None if since is None else epoch_us(as_utc(since)),
            None if until is None else epoch_us(as_utc(until)),
        )
        start = None if after is None else int(after)
        rows = await self._read(lambda c: query_rows(c, types, window, start, limit + 1))
        events = [decode_stored(pos, body) for pos, body in rows[:limit]]
        more = len(rows) > limit
        return Page(events, events[-1].position if more and events else None)

    async def count(self) -> int:
        row = await self._read(lambda c: c.execute("SELECT count(*) FROM omniq_events").fetchone())
        return int(row[0])

    async def prune(
        self, *, older_than: datetime | None = None, max_events: int | None = None
    ) -> int:
        """Delete in chunks of up to ``PRUNE_CHUNK`` rows, one transaction each, pausing
        between them so that appends of this and other processes get the lock in time."""
        check_prune_limit(max_events)
        deleted = 0
        if older_than is not None:
            cutoff = epoch_us(as_utc(older_than))
            deleted += await prune_in_chunks(self._write, lambda c, n: prune_older(c, cutoff, n))
        if max_events is not None:
            last = await self._read(lambda c: keep_newest_from(c, max_events))
            if last is not None:
                deleted += await prune_in_chunks(
                    self._write, lambda c, n: prune_through(c, last, n)
                )
        return deleted

    async def health(self) -> Health:
        """A cheap real read: the schema version and both ends of the log and its indexes.

        A damaged database is not ok. ``integrity_problems`` checks every page.
        """
        try:
            version = await self._read(health_probe)
        except Exception as exc:
            return Health(ok=False, backend=self.backend_name, detail=str(exc))
        return Health(
            ok=True, backend=self.backend_name, detail=str(self.path), schema_version=version
        )

    async def integrity_problems(self) -> list[str]:
        """Run ``PRAGMA quick_check`` over the whole file; return what it found (``[]``: ok).

        Raises:
            StorageError: the file cannot be read at all.
        """
        return await self._read(quick_check)

    async def close(self) -> None:
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            started, reader = self._group.close(), self._reader
        if started:
            await asyncio.get_running_loop().run_in_executor(None, self._group.join)
            self._group.fail_leftovers()
        if reader is not None:
            if self._read_conn is not None:
                conn = self._read_conn
                await asyncio.get_running_loop().run_in_executor(reader, conn.close)
            reader.shutdown(wait=True)

    def close_blocking(self) -> None:
        """Close from sync code (no running loop)."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            started, reader = self._group.close(), self._reader
        if started:
            self._group.join()
            self._group.fail_leftovers()
        if reader is not None:
            if self._read_conn is not None:
                reader.submit(self._read_conn.close).result()
            reader.shutdown(wait=True)


def _now_us() -> int:
    return time.time_ns() // 1000


def _transaction(conn: sqlite3.Connection, items: list[_Item]) -> list[Any]:
    """Insert the rows of ``items``, run their functions, and commit: one transaction."""
    rows = [row for item in items for row in item.rows]
    conn.execute("BEGIN IMMEDIATE")
    try:
        if rows:
            insert_events(conn, rows)
        results = [item.fn(conn) if item.fn is not None else None for item in items]
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results
