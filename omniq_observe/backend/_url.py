"""Build a storage backend from a URL."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from omniq_observe.backend.base import BaseEventStorage
from omniq_observe.exceptions import InvalidURLError

__all__ = ["SUPPORTED_SCHEMES", "from_url"]

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

        params = _int_params(url, dict(parse_qsl(parts.query)), {"max_events"})
        return MemoryBackend(**params, **options)
    if scheme == "sqlite":
        from omniq_observe.backend.sqlite import SQLiteBackend

        path = url[len("sqlite:///") :].split("?", 1)[0] if url.startswith("sqlite:///") else ""
        if not path:
            msg = (
                f"storage URL {url!r} names no database file; use sqlite:///relative.db "
                "or sqlite:////absolute/path.db"
            )
            raise InvalidURLError(msg, setting="storage", value=url)
        params = _int_params(url, dict(parse_qsl(parts.query)), {"max_batch"})
        return SQLiteBackend(path, **params, **options)
    if scheme in _URL_BACKENDS:
        module_name, class_name = _URL_BACKENDS[scheme]
        backend_class = getattr(importlib.import_module(module_name), class_name)
        backend: BaseEventStorage = backend_class.from_url(url, **options)
        return backend
    msg = f"storage URL {url!r} has unsupported scheme {scheme!r}; supported: {_examples()}"
    raise InvalidURLError(msg, setting="storage", value=url)


def _int_params(url: str, params: dict[str, Any], int_keys: set[str]) -> dict[str, Any]:
    for key in int_keys & params.keys():
        try:
            params[key] = int(params[key])
        except ValueError:
            msg = f"storage URL {url!r}: parameter {key}={params[key]!r} is not an integer"
            raise InvalidURLError(msg, setting=key, value=params[key]) from None
    return params


def _examples() -> str:
    return (
        "memory://, sqlite:///relative.db, sqlite:////absolute/path.db, "
        "redis://host:6379/0, postgresql://user@host/db"
    )
