"""Shared fixtures: every storage backend, fresh and empty.

Backends are listed in ``_server_backends.BACKEND_FACTORIES``; the contract suite runs on
every entry. Backends that need a server skip when it is unreachable, except under
``CI=true``, where an unreachable server fails the test. Plain helpers (polling with a
deadline, free ports, server URLs) are in ``_helpers.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from _server_backends import BACKEND_FACTORIES

from omniq_observe.backend import BaseEventStorage, SQLiteBackend


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
