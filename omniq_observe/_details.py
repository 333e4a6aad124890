"""Helpers for event details: the queue, the error type, redaction and truncation.

Shared by the logger's span events and by every handler, so that Prometheus labels, log
fields and span attributes always agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DEFAULT_REDACT_KEYS",
    "REDACTED",
    "Redactor",
    "error_type_of",
    "queue_of",
    "truncate",
]

DEFAULT_REDACT_KEYS = ("password", "secret", "token", "authorization", "api_key")
REDACTED = "[REDACTED]"
_ERROR_CLASS = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*([A-Z]\w*))\s*(?::|$)")


def queue_of(details: Mapping[str, Any]) -> str | None:
    """Return the queue a details mapping names (``queue_name``, else ``queue``), if any."""
    queue = details.get("queue_name")
    if not isinstance(queue, str) or not queue:
        queue = details.get("queue")
    return queue if isinstance(queue, str) and queue else None


def error_type_of(details: Mapping[str, Any]) -> str:
    """Return the error type of a failure.

    ``details["error_type"]`` when given; else the exception class name at the start of
    ``details["error"]`` (``"ValueError: bad input"`` gives ``ValueError``, a dotted
    ``"pkg.mod.Timeout: x"`` gives ``Timeout``); else ``"unknown"``.
    """
    given = details.get("error_type")
    if isinstance(given, str) and given.strip():
        return given.strip()
    error = details.get("error")
    if isinstance(error, str):
        match = _ERROR_CLASS.match(error)
        if match:
            return match.group(2)
    return "unknown"


def truncate(value: str, limit: int) -> str:
    """Cut ``value`` to ``limit`` characters, marking the cut with an ellipsis."""
    if limit <= 0 or len(value) <= limit:
        return value
    return value[: max(0, limit - 1)] + "…"


class Redactor:
    """Replaces the values of sensitive keys with ``[REDACTED]``.

    A key is sensitive when it contains one of ``keys`` (case-insensitive), so
    ``db_password`` and ``X-Api_Key`` match ``password`` and ``api_key``.

    Args:
        keys: the substrings that mark a key sensitive.
    """

    def __init__(self, keys: Iterable[str] = DEFAULT_REDACT_KEYS) -> None:
        self.keys = tuple(k.lower() for k in keys)
        self._cache: dict[str, bool] = {}

    def is_sensitive(self, key: str) -> bool:
        """Return True when ``key`` names a secret."""
        hit = self._cache.get(key)
        if hit is None:
            lowered = key.lower()
            hit = any(k in lowered for k in self.keys)
            if len(self._cache) < 10_000:
                self._cache[key] = hit
        return hit

    def redact(self, details: Mapping[str, Any]) -> dict[str, Any]:
        """Return a copy of ``details`` with sensitive values replaced, nested too."""
        return {
            key: REDACTED if self.is_sensitive(key) else self._redact_value(value)
            for key, value in details.items()
        }

    def _redact_value(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return self.redact(value)
        if isinstance(value, list):
            return [self._redact_value(v) for v in value]
        return value
