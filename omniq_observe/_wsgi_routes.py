"""Extra pages on the exporter's server: a route table of path -> WSGI app."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from omniq_observe.exceptions import ConfigurationError

__all__ = ["WSGIApp", "checked_routes", "route_for"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
"""A WSGI application (PEP 3333)."""

_OWN_PATHS = frozenset({"/metrics", "/healthz"})


def checked_routes(routes: Mapping[str, WSGIApp] | None) -> dict[str, WSGIApp]:
    """Validate an extra route table: path -> WSGI app (a path ending in ``/`` is a prefix).

    Raises:
        ConfigurationError: a path is not absolute, is one of the exporter's own, or its
            app is not callable.
    """
    table: dict[str, WSGIApp] = {}
    for path, route_app in (routes or {}).items():
        if not isinstance(path, str) or not path.startswith("/") or path in _OWN_PATHS:
            msg = f"routes: {path!r} must be an absolute path other than /metrics and /healthz"
            raise ConfigurationError(msg, setting="routes", value=path)
        if not callable(route_app):
            msg = f"routes[{path!r}] must be a WSGI app, got {type(route_app).__name__}"
            raise ConfigurationError(msg, setting="routes", value=route_app)
        table[path] = route_app
    return table


def route_for(routes: dict[str, WSGIApp], path: str) -> WSGIApp | None:
    """The app of the exact path, else of the longest matching prefix (keys ending in /)."""
    if not routes:
        return None
    if path.rstrip("/") in _OWN_PATHS:
        return None
    found = routes.get(path) or routes.get(path.rstrip("/") or "/")
    if found is not None:
        return found
    prefixes = [p for p in routes if p.endswith("/") and p != "/" and path.startswith(p)]
    return routes[max(prefixes, key=len)] if prefixes else None
