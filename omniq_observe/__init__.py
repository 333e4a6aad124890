"""Observability for OmniQ task queues: event storage, Prometheus, structlog and OpenTelemetry.

The main names are re-exported here, so ``from omniq_observe import TaskEvent, SQLiteBackend``
works; their modules (``omniq_observe.models.event``, ``omniq_observe.backend``,
``omniq_observe.events``, ``omniq_observe.handlers``, ``omniq_observe.exporter``) stay where
they are. ``RedisBackend`` and ``PostgresBackend`` load on first use, as in
``omniq_observe.backend``, so the package imports without their extras.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from omniq_observe.backend import BaseEventStorage, MemoryBackend, SQLiteBackend, from_url
from omniq_observe.events import AsyncEventLogger, AsyncEventProcessor, EventLogger, EventProcessor
from omniq_observe.exporter import start_http_server
from omniq_observe.handlers import (
    OTelLogsHandler,
    OTelMetricsHandler,
    PrometheusHandler,
    StructlogHandler,
    TracingHandler,
)
from omniq_observe.models.event import EventType, TaskEvent

if TYPE_CHECKING:
    from omniq_observe.backend.postgres import PostgresBackend
    from omniq_observe.backend.redis import RedisBackend

__all__ = [
    "AsyncEventLogger",
    "AsyncEventProcessor",
    "BaseEventStorage",
    "EventLogger",
    "EventProcessor",
    "EventType",
    "MemoryBackend",
    "OTelLogsHandler",
    "OTelMetricsHandler",
    "PostgresBackend",
    "PrometheusHandler",
    "RedisBackend",
    "SQLiteBackend",
    "StructlogHandler",
    "TaskEvent",
    "TracingHandler",
    "__version__",
    "from_url",
    "start_http_server",
]

try:
    __version__: str = version("omniq-observe")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

_LAZY = ("RedisBackend", "PostgresBackend")


def __getattr__(name: str) -> Any:
    # The backends whose extras may be missing load on first use, through omniq_observe.backend.
    if name in _LAZY:
        from omniq_observe import backend

        return getattr(backend, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
