"""The connections of :mod:`omniq_observe.backend.postgres`: a lazily opened pool that
migrates the schema on first use, retries after a lost connection and translates errors
into :mod:`omniq_observe.exceptions`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from omniq_observe.backend._pg_schema import migrate
from omniq_observe.backend._url import safe_url
from omniq_observe.exceptions import BackendUnavailableError, StorageError

__all__ = ["PgConnections"]

_T = TypeVar("_T")


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
            if isinstance(exc, PoolTimeout):
                msg = f"PostgreSQL at {safe_url(self.dsn)} unreachable: {exc}"
                raise BackendUnavailableError(msg) from exc
            if isinstance(exc, psycopg.Error):
                msg = f"cannot set up schema {self.schema!r}: {exc}"
                raise StorageError(msg) from exc
            raise
        self._pool = pool
        return pool

    async def run(self, what: str, fn: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run ``fn(connection)``; retry after a lost connection; translate errors.

        ``what`` says what was being done, for the error message.
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
            except psycopg.OperationalError as exc:
                if attempt == self.retries:
                    msg = f"PostgreSQL connection lost while {what}: {exc}"
                    raise BackendUnavailableError(msg) from exc
                await pool.check()  # drop the other dead connections, not only this one
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except psycopg.Error as exc:
                msg = f"PostgreSQL {what} failed: {exc}"
                raise StorageError(msg) from exc
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
