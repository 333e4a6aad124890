"""Shared fixtures: every storage backend, real servers, and helpers to poll with a deadline.

Backends are listed in ``BACKEND_FACTORIES``; the contract suite runs on every entry.
Backends that need a server skip when it is unreachable, except under ``CI=true``, where
an unreachable server fails the test.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from omniq_observe.backend import BaseEventStorage, MemoryBackend, SQLiteBackend

IN_CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("OMNIQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "OMNIQ_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def require_server(name: str, host: str, port: int) -> None:
    """Skip when ``host:port`` does not answer; under CI=true, fail instead."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError as exc:
        message = f"{name} at {host}:{port} is unreachable: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: servers must be up)")
        pytest.skip(message)


def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


async def async_wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    """Like :func:`wait_until`, for coroutines; ``condition`` may be async."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(interval)


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# name -> factory(tmp_path) returning a fresh, empty backend. Server-backed factories
# call require_server first and use a key prefix / schema of their own per test.
BACKEND_FACTORIES: dict[str, Callable[[Path], BaseEventStorage]] = {
    "memory": lambda tmp: MemoryBackend(),
    "sqlite": lambda tmp: SQLiteBackend(tmp / "events.db"),
}
from _server_backends import SERVER_FACTORIES  # noqa: E402 - needs the names above

BACKEND_FACTORIES.update(SERVER_FACTORIES)


@pytest.fixture(params=sorted(BACKEND_FACTORIES))
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BaseEventStorage]:
    """Every backend, fresh and empty, closed after the test."""
    storage = BACKEND_FACTORIES[request.param](tmp_path)
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    """A SQLite backend on a fresh file."""
    storage = SQLiteBackend(tmp_path / "events.db")
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Iterator[Path]:
    """A path for a SQLite file that the test shares between processes."""
    yield tmp_path / "shared.db"
