"""Every backend for the shared contract suite, with those on the real Redis and PostgreSQL.

``BACKEND_FACTORIES`` maps a name to ``factory(tmp_path) -> backend``; ``SERVER_FACTORIES``
holds the server-backed entries. Each server factory first checks that its server answers
(``require_server``: skip locally, fail under CI=true) and gives every backend a key
prefix / schema of its own, removed again on ``close()``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import redis.asyncio as aioredis
from _helpers import POSTGRES_URL, REDIS_URL, require_server

from omniq_observe.backend import BaseEventStorage, MemoryBackend, SQLiteBackend
from omniq_observe.backend.postgres import PostgresBackend
from omniq_observe.backend.redis import RedisBackend

__all__ = [
    "BACKEND_FACTORIES",
    "SERVER_FACTORIES",
    "TestPostgresBackend",
    "TestRedisBackend",
    "make_postgres",
    "make_redis",
    "unique_name",
]


def unique_name(kind: str) -> str:
    """A fresh prefix / schema name for one test."""
    return f"omniq_test_{kind}_{uuid.uuid4().hex[:12]}"


class TestRedisBackend(RedisBackend):
    """A RedisBackend that deletes its keys when closed."""

    __test__ = False

    async def close(self) -> None:
        if not self._closed:
            client = aioredis.Redis.from_url(REDIS_URL)
            try:
                keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*", count=1000)]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()
        await super().close()


class TestPostgresBackend(PostgresBackend):
    """A PostgresBackend that drops its schema when closed."""

    __test__ = False

    async def close(self) -> None:
        closed = self._closed
        await super().close()
        if not closed:
            dsn = POSTGRES_URL
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def _require(url: str, name: str, default_port: int) -> None:
    parts = urlsplit(url)
    require_server(name, parts.hostname or "127.0.0.1", parts.port or default_port)


def make_redis(tmp: Path | None = None, **options: object) -> TestRedisBackend:
    """A Redis backend with a fresh prefix (skips when Redis is down)."""
    url = REDIS_URL
    _require(url, "Redis", 6379)
    return TestRedisBackend(url, prefix=unique_name("redis"), **options)  # type: ignore[arg-type]


def make_postgres(
    tmp: Path | None = None, query: str = "", **options: object
) -> TestPostgresBackend:
    """A PostgreSQL backend in a fresh schema (skips when PostgreSQL is down); ``query``
    is added to the DSN (``"?application_name=x"``)."""
    dsn = POSTGRES_URL
    _require(dsn, "PostgreSQL", 5432)
    return TestPostgresBackend(dsn + query, schema=unique_name("pg"), **options)  # type: ignore[arg-type]


SERVER_FACTORIES: dict[str, Callable[[Path], BaseEventStorage]] = {
    "redis": make_redis,
    "postgres": make_postgres,
}

# name -> factory(tmp_path) returning a fresh, empty backend.
BACKEND_FACTORIES: dict[str, Callable[[Path], BaseEventStorage]] = {
    "memory": lambda tmp: MemoryBackend(),
    "sqlite": lambda tmp: SQLiteBackend(tmp / "events.db"),
    **SERVER_FACTORIES,
}
