"""Data models: the task lifecycle event."""

from omniq_observe.models.event import EventType, TaskEvent

__all__ = ["EventType", "TaskEvent"]
