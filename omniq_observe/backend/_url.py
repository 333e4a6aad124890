"""Build a storage backend from a URL."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from omniq_observe.backend.base import BaseEventStorage
from omniq_observe.exceptions import InvalidURLError

__all__ = ["SUPPORTED_SCHEMES", "from_url", "safe_url", "split_url_options"]

SUPPORTED_SCHEMES = ("memory", "sqlite", "redis", "rediss", "postgresql", "postgres")

# scheme -> (module, class) of the backends that take the whole URL
_URL_BACKENDS = {
    "redis": ("omniq_observe.backend.redis", "RedisBackend"),
    "rediss": ("omniq_observe.backend.redis", "RedisBackend"),
    "postgresql": ("omniq_observe.backend.postgres", "PostgresBackend"),
    "postgres": ("omniq_observe.backend.postgres", "PostgresBackend"),
}


def from_url(url: str, **options: Any) -> BaseEventStorage:
    """Build the backend a storage URL names.

    ``memory://``, ``sqlite:///relative.db``, ``sqlite:////absolute/path.db``,
    ``redis://host:6379/0``, ``postgresql://user@host/db``. Query parameters and
    ``options`` become keyword arguments of the backend.

    Raises:
        InvalidURLError: the URL is malformed or its scheme is not supported.
        MissingExtraError: the backend's extra (``redis``, ``postgres``) is not installed.
    """
    if not isinstance(url, str) or "://" not in url:
        msg = f"storage URL {url!r} is not a URL; expected one of: {_examples()}"
        raise InvalidURLError(msg, setting="storage", value=url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        from omniq_observe.backend.memory import MemoryBackend

        _, params = split_url_options(url, {"max_events": int})
        return MemoryBackend(**{**params, **options})
    if scheme == "sqlite":
        from omniq_observe.backend.sqlite import SQLiteBackend

        path = url[len("sqlite:///") :].split("?", 1)[0] if url.startswith("sqlite:///") else ""
        if not path:
            msg = (
                f"storage URL {url!r} names no database file; use sqlite:///relative.db "
                "or sqlite:////absolute/path.db"
            )
            raise InvalidURLError(msg, setting="storage", value=url)
        kinds = {"max_batch": int, "lease_seconds": float, "busy_timeout": float}
        _, params = split_url_options(url, kinds)
        return SQLiteBackend(path, **{**params, **options})
    if scheme in _URL_BACKENDS:
        module_name, class_name = _URL_BACKENDS[scheme]
        backend_class = getattr(importlib.import_module(module_name), class_name)
        backend: BaseEventStorage = backend_class.from_url(url, **options)
        return backend
    msg = f"storage URL {url!r} has unsupported scheme {scheme!r}; supported: {_examples()}"
    raise InvalidURLError(msg, setting="storage", value=url)


def split_url_options(url: str, kinds: dict[str, type]) -> tuple[str, dict[str, Any]]:
    """Take the query parameters named in ``kinds`` out of ``url``, converted to their type.

    Returns the URL with only the other parameters left, and the converted ones.

    Raises:
        InvalidURLError: a parameter does not convert; the message names it and its value.
    """
    parts = urlsplit(url)
    rest: list[tuple[str, str]] = []
    taken: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query):
        kind = kinds.get(key)
        if kind is None:
            rest.append((key, value))
            continue
        try:
            taken[key] = kind(value)
        except ValueError:
            msg = f"storage URL {url!r}: parameter {key}={value!r} is not a valid {kind.__name__}"
            raise InvalidURLError(msg, setting=key, value=value) from None
    return urlunsplit(parts._replace(query=urlencode(rest))), taken


def safe_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, for messages."""
    parts = urlsplit(url)
    if "://" not in url or parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _examples() -> str:
    return (
        "memory://, sqlite:///relative.db, sqlite:////absolute/path.db, "
        "redis://host:6379/0, postgresql://user@host/db"
    )
