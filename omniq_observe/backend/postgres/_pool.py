"""The connections of :mod:`omniq_observe.backend.postgres`: a lazily opened pool that
migrates the schema on first use, retries transient failures and translates errors into
:mod:`omniq_observe.exceptions`.

Server errors are classified by SQLSTATE (:func:`is_transient`): a lost connection
(class 08, an administrator's or a crash's shutdown, no reply at all) and a serialization
failure or deadlock are retried and finally raised as
:class:`~omniq_observe.exceptions.BackendUnavailableError`; anything else (a value too
long for an index, a bad character, a constraint) is a data error that no retry can mend:
it is raised at once as :class:`~omniq_observe.exceptions.StorageError` with the server's
error as its cause (or as what the caller's ``data_error`` makes of it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from omniq_observe.backend._url import safe_url
from omniq_observe.backend.postgres._schema import migrate
from omniq_observe.exceptions import BackendUnavailableError, InvalidEventError, StorageError
from omniq_observe.models.event import TaskEvent

__all__ = ["PgConnections", "is_transient", "rejected_events"]

_T = TypeVar("_T")

# SQLSTATEs worth a retry besides class 08 (connection exception): serialization failure,
# deadlock, and the server shutting the session down (pg_terminate_backend, a crash).
_TRANSIENT_STATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})


def is_transient(exc: psycopg.Error) -> bool:
    """Whether ``exc`` is a failure a retry may get past (see the module docstring)."""
    state = exc.sqlstate
    if state is None:  # no server reply: the connection was lost (or never made)
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith("08") or state in _TRANSIENT_STATES


class PgConnections:
    """One backend's connection pool, opened (and the schema migrated) on first use.

    Args:
        dsn: a libpq connection string or URL.
        schema: the schema to create or migrate when the pool opens.
        pool_size: the most connections open at once.
        retries: how often an operation is retried after a lost connection.
        connect_timeout: seconds to wait for a connection before failing.
    """

    def __init__(
        self, dsn: str, schema: str, pool_size: int, retries: int, connect_timeout: float
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.pool_size = pool_size
        self.retries = retries
        self.connect_timeout = connect_timeout
        self.closed = False
        self._pool: AsyncConnectionPool | None = None
        self._opening: asyncio.Future[AsyncConnectionPool] | None = None

    @property
    def opened(self) -> bool:
        """Whether the pool is open (a first operation has connected)."""
        return self._pool is not None

    async def open(self) -> AsyncConnectionPool:
        """The pool; the first call opens it and migrates the schema.

        Raises:
            BackendUnavailableError: the server cannot be reached.
            StorageError: the pool is closed, or the schema cannot be set up.
        """
        if self._pool is not None:
            return self._pool
        if self.closed:
            msg = f"PostgresBackend(schema={self.schema!r}) is closed"
            raise StorageError(msg)
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open_pool())
        try:
            return await asyncio.shield(self._opening)
        except BaseException:
            if self._opening.done():
                self._opening = None
            raise

    async def _probe(self) -> None:
        """Connect once, directly: an unreachable server fails at once, in one error,
        instead of the pool retrying (and logging each try) until ``connect_timeout``."""
        try:
            conn = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(self.dsn, autocommit=True), self.connect_timeout
            )
        except (psycopg.OperationalError, asyncio.TimeoutError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
            if isinstance(exc, asyncio.TimeoutError):
                reason = f"no answer within {self.connect_timeout:g}s"
            msg = f"PostgreSQL at {safe_url(self.dsn)} unreachable: {reason}"
            raise BackendUnavailableError(msg) from exc
        await conn.close()

    async def _open_pool(self) -> AsyncConnectionPool:
        await self._probe()
        pool = AsyncConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            timeout=self.connect_timeout,
            kwargs={"autocommit": True, "options": "-c TimeZone=UTC"},
            name=f"omniq-{self.schema}",
        )
        await pool.open(wait=False)
        try:
            async with pool.connection() as conn:
                await migrate(conn, self.schema)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, PoolTimeout) or (
                isinstance(exc, psycopg.Error) and is_transient(exc)
            ):
                msg = f"PostgreSQL at {safe_url(self.dsn)} unreachable: {exc}"
                raise BackendUnavailableError(msg) from exc
            if isinstance(exc, psycopg.Error):
                msg = f"cannot set up schema {self.schema!r}: {exc}"
                raise StorageError(msg) from exc
            raise
        self._pool = pool
        return pool

    async def run(
        self,
        what: str,
        fn: Callable[[Any], Awaitable[_T]],
        data_error: Callable[[psycopg.Error], Exception] | None = None,
    ) -> _T:
        """Run ``fn(connection)``; retry transient failures; translate errors.

        ``what`` says what was being done, for the error message; ``data_error`` turns a
        data error into the exception to raise (default: :class:`StorageError`).
        """
        pool = await self.open()
        delay = 0.02
        for attempt in range(self.retries + 1):
            try:
                async with pool.connection() as conn:
                    return await fn(conn)
            except PoolTimeout as exc:
                msg = f"PostgreSQL at {safe_url(self.dsn)} unavailable while {what}: {exc}"
                raise BackendUnavailableError(msg) from exc
            except psycopg.Error as exc:
                if not is_transient(exc):
                    if data_error is not None:
                        raise data_error(exc) from exc
                    msg = f"PostgreSQL {what} failed: {exc}"
                    raise StorageError(msg) from exc
                if attempt == self.retries:
                    serial = exc.sqlstate in ("40001", "40P01")
                    kind = "serialization failure" if serial else "connection lost"
                    msg = f"PostgreSQL {kind} while {what}: {exc}"
                    raise BackendUnavailableError(msg) from exc
                await pool.check()  # drop the other dead connections, not only this one
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def fetch(self, what: str, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Run one statement and return all its rows (see :meth:`run`)."""

        async def fetch(conn: Any) -> list[Any]:
            cur = await conn.execute(sql, args)
            rows: list[Any] = await cur.fetchall()
            return rows

        return await self.run(what, fetch)

    async def close(self) -> None:
        """Refuse new work and close the pool, also one still opening."""
        self.closed = True
        opening, pool = self._opening, self._pool
        if pool is None and opening is not None and opening.done() and not opening.exception():
            pool = opening.result()
        if pool is not None:
            await pool.close()


# SQLSTATE classes of errors an event's own values cause: data exception, integrity
# constraint, program limit (a value too long for an index).
_EVENT_ERROR_CLASSES = ("22", "23", "54")


def rejected_events(events: Sequence[TaskEvent], exc: psycopg.Error) -> Exception:
    """What to raise when PostgreSQL refused to store ``events`` (not a transient failure).

    An error caused by the events' own values becomes :class:`InvalidEventError`, naming
    the field when the server's message names its index; anything else is a
    :class:`StorageError`.
    """
    state = exc.sqlstate or ""
    if not state.startswith(_EVENT_ERROR_CLASSES):
        msg = f"PostgreSQL refused to store {len(events)} event(s): {exc}"
        return StorageError(msg)
    text = str(exc)
    field = next((name for index, name in _INDEXED_FIELDS if index in text), "event")
    value: Any = [getattr(e, field, e) for e in events] if field != "event" else list(events)
    shown = value[0] if len(value) == 1 else value
    msg = f"PostgreSQL cannot store {field}={_short(shown)}: {exc}"
    return InvalidEventError(msg, field=field, value=shown)


_INDEXED_FIELDS = (("omniq_events_task", "task_id"), ("omniq_events_type", "event_type"),
                   ("omniq_events_event_id", "event_id"))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"
