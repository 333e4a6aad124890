"""Plain helpers for the tests: server URLs, polling with a deadline, free ports.

Fixtures live in ``conftest.py``; these are functions and constants that test modules
import by name.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

__all__ = [
    "IN_CI",
    "POSTGRES_URL",
    "REDIS_URL",
    "async_wait_until",
    "free_port",
    "require_server",
    "wait_until",
]

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
