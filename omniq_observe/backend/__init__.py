"""Storage backends and the contract they share.

``RedisBackend`` and ``PostgresBackend`` load on first use, so that the package imports
without their extras installed; using one without its extra raises
:class:`~omniq_observe.exceptions.MissingExtraError` naming the extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from omniq_observe.backend._url import from_url
from omniq_observe.backend.base import (
    BaseEventStorage,
    Consumer,
    DeadLetter,
    Health,
    Page,
    Position,
    StoredEvent,
    UndecodableEvent,
)
from omniq_observe.backend.memory import MemoryBackend
from omniq_observe.backend.sqlite import SQLiteBackend

if TYPE_CHECKING:
    from omniq_observe.backend.postgres import PostgresBackend
    from omniq_observe.backend.redis import RedisBackend

__all__ = [
    "BaseEventStorage",
    "Consumer",
    "DeadLetter",
    "Health",
    "MemoryBackend",
    "Page",
    "Position",
    "PostgresBackend",
    "RedisBackend",
    "SQLiteBackend",
    "StoredEvent",
    "UndecodableEvent",
    "from_url",
]

_LAZY = {
    "RedisBackend": "omniq_observe.backend.redis",
    "PostgresBackend": "omniq_observe.backend.postgres",
}


def __getattr__(name: str) -> Any:
    # Optional extras load lazily; this is the one thing defined here besides re-exports.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
