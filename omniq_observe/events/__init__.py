"""Event loggers and processors."""

from omniq_observe.events.logger import AsyncEventLogger, EventLogger, LoggerStats
from omniq_observe.events.processor import (
    AsyncEventProcessor,
    EventProcessor,
    Handler,
    ProcessorStats,
)

__all__ = [
    "AsyncEventLogger",
    "AsyncEventProcessor",
    "EventLogger",
    "EventProcessor",
    "Handler",
    "LoggerStats",
    "ProcessorStats",
]
