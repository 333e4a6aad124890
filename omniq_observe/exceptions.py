"""The one exception hierarchy of omniq-observe, rooted at :class:`OmniqObserveError`."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendUnavailableError",
    "ConfigurationError",
    "InvalidEventError",
    "InvalidURLError",
    "MissingExtraError",
    "OmniqObserveError",
    "StorageError",
]


class OmniqObserveError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidEventError(OmniqObserveError, ValueError):
    """A :class:`~omniq_observe.models.event.TaskEvent` field holds a value it cannot take.

    Attributes:
        field: the field or key path at fault, e.g. ``details['result']``.
        value: the offending value (or its type name when the value cannot be shown).
    """

    def __init__(self, message: str, *, field: str, value: Any) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class ConfigurationError(OmniqObserveError, ValueError):
    """A setting or argument is invalid; the message names it and its value."""

    def __init__(self, message: str, *, setting: str = "", value: Any = None) -> None:
        super().__init__(message)
        self.setting = setting
        self.value = value


class InvalidURLError(ConfigurationError):
    """A storage URL is malformed or names an unsupported scheme."""


class MissingExtraError(OmniqObserveError, ImportError):
    """An optional integration is used without its extra installed."""


class StorageError(OmniqObserveError, OSError):
    """The storage backend failed; ``__cause__`` holds the underlying error."""


class BackendUnavailableError(StorageError, ConnectionError):
    """The storage backend cannot be reached."""
