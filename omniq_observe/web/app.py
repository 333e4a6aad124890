"""The routes of the web view: three pages, their static files and the JSON API.

Pages (static HTML; the script of each fetches the API): ``/`` the overview per queue,
``/failures`` the latest FAILED and TIMEOUT events, ``/tasks/<task id or unique prefix>``
one task's timeline. JSON: ``/api/queues``, ``/api/failures``, ``/api/tasks/<id>``.

Everything is read-only (GET and HEAD). Every response forbids inline script and framing
through its Content-Security-Policy; the pages build their DOM with ``textContent``, so
stored text never becomes markup.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
from collections.abc import Callable, Coroutine, Iterable
from http import HTTPStatus
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

from omniq_observe.exceptions import ConfigurationError
from omniq_observe.exporter import WSGIApp
from omniq_observe.web._live import WINDOWS
from omniq_observe.web._state import WebState

__all__ = ["CONTENT_SECURITY_POLICY", "WebView", "check_trace_url"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
]
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".txt": "text/plain; charset=utf-8"}
_PAGES = {"/": "overview", "/failures": "failures"}
# page -> (title, its style sheets, its scripts), around static/<page>.main.html
_LAYOUT = {
    "overview": ("Overview", ["uplot/uPlot.min.css"],
                 ["uplot/uPlot.iife.min.js", "common.js", "overview.js"]),
    "failures": ("Failures", [], ["common.js", "failures.js"]),
    "task": ("Task", [], ["common.js", "task.js"]),
}
_STATIC = re.compile(r"^/static/([a-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)?)$")
_MAX_LIMIT = 1000
_TIMEOUT = 10.0

Response = tuple[int, list[tuple[str, str]], bytes]
_T = TypeVar("_T")


def check_trace_url(template: str | None) -> str | None:
    """Return ``template`` if it is an http(s) URL holding ``{trace_id}``.

    Raises:
        ConfigurationError: anything else.
    """
    if template is None:
        return None
    if not re.match(r"^https?://[^\s]+$", template) or "{trace_id}" not in template:
        msg = (f"trace_url {template!r} must be an http:// or https:// URL containing "
               "{trace_id}, e.g. http://127.0.0.1:16686/trace/{trace_id}")
        raise ConfigurationError(msg, setting="trace_url", value=template)
    return template


def _load_static() -> dict[str, tuple[str, bytes]]:
    files: dict[str, tuple[str, bytes]] = {}
    root = resources.files("omniq_observe.web") / "static"
    folders = [("", root)]
    while folders:
        prefix, folder = folders.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                folders.append((f"{prefix}{entry.name}/", entry))
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1]
            if suffix in _TYPES or entry.name == "LICENSE":
                files[prefix + entry.name] = (_TYPES.get(suffix, _TYPES[".txt"]),
                                              entry.read_bytes())
    return files


def _pages(files: dict[str, tuple[str, bytes]]) -> dict[str, bytes]:
    """The three pages: ``page.html`` around each page's ``<main>`` (constant text only)."""
    skeleton = files["page.html"][1].decode()
    pages = {}
    for page, (title, styles, scripts) in _LAYOUT.items():
        html = (skeleton.replace("{{title}}", title).replace("{{page}}", page)
                .replace("{{main}}", files[f"{page}.main.html"][1].decode())
                .replace("{{styles}}", "".join(
                    f'  <link rel="stylesheet" href="/static/{name}">\n' for name in styles))
                .replace("{{scripts}}", "".join(
                    f'  <script src="/static/{name}"></script>\n' for name in scripts)))
        pages[page] = html.encode()
    return pages


class WebView:
    """The web view as a WSGI app, mounted on the exporter's server by :meth:`routes`.

    Args:
        state: the live state (it runs on ``loop``).
        loop: the event loop that owns ``state`` and the storage.
        trace_url: a trace UI link template holding ``{trace_id}``.
    """

    def __init__(
        self, state: WebState, loop: asyncio.AbstractEventLoop, trace_url: str | None = None
    ) -> None:
        self.state = state
        self.loop = loop
        self.trace_url = check_trace_url(trace_url)
        self.static = _load_static()
        self.pages = _pages(self.static)

    def routes(self) -> dict[str, WSGIApp]:
        """The exporter's route table for the view (``start_http_server(routes=...)``)."""
        return {path: self for path in ("/", "/failures", "/tasks", "/tasks/", "/static/",
                                        "/api/")}

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """The WSGI app: GET and HEAD only (the view is read-only)."""
        method = environ.get("REQUEST_METHOD", "GET")
        if method in ("GET", "HEAD"):
            answer = self.respond(environ.get("PATH_INFO", "/"), environ.get("QUERY_STRING", ""))
        else:
            answer = 405, [("Allow", "GET, HEAD"), *_SECURITY_HEADERS], b"method not allowed\n"
        status, headers, body = answer
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [b"" if method == "HEAD" else body]

    def respond(self, path: str, query: str) -> Response:
        """Answer a GET of ``path`` (WSGI's latin-1 form) with ``query``."""
        path = _utf8(path)
        if path in _PAGES:
            return self._page(_PAGES[path])
        if path == "/tasks" or path == "/tasks/":
            key = (parse_qs(query).get("q") or [""])[0].strip()
            if not key:
                return self._page("task")
            return 302, [("Location", "/tasks/" + quote(key, safe="")), *_SECURITY_HEADERS], b""
        if path.startswith("/tasks/"):
            return self._page("task")
        static = _STATIC.match(path)
        if static is not None:
            return self._file(static.group(1))
        if path.startswith("/api/"):
            return self._api(path, parse_qs(query))
        return _json(404, {"error": "not found"})

    def _page(self, page: str) -> Response:
        return 200, [("Content-Type", _TYPES[".html"]), ("Cache-Control", "no-cache"),
                     *_SECURITY_HEADERS], self.pages[page]

    def _file(self, name: str) -> Response:
        found = self.static.get(name)
        if found is None:
            return _json(404, {"error": "not found"})
        content_type, body = found
        return 200, [("Content-Type", content_type), ("Cache-Control", "no-cache"),
                     *_SECURITY_HEADERS], body

    def _api(self, path: str, params: dict[str, list[str]]) -> Response:
        try:
            if path == "/api/queues":
                window = _window(params)
                return _json(200, self._on_loop(self._async(
                    lambda: self.state.queues_document(window))))
            if path == "/api/failures":
                window, limit = _window(params), _limit(params)
                queue, error_type = _one(params, "queue"), _one(params, "error_type")
                return _json(200, self._on_loop(self._async(
                    lambda: self.state.failures_document(window, queue, error_type, limit))))
            if path.startswith("/api/tasks/") and len(path) > len("/api/tasks/"):
                status, document = self._on_loop(self.state.task_document(path[11:]))
                if status == 200:
                    document["trace_links"] = self._trace_links(document["trace_ids"])
                return _json(status, document)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            return _json(503, {"error": f"the server is busy or stopping: {exc!r}"})
        return _json(404, {"error": f"no API route {path!r}"})

    def _trace_links(self, trace_ids: list[str]) -> dict[str, str]:
        if self.trace_url is None:
            return {}
        return {t: self.trace_url.replace("{trace_id}", t) for t in trace_ids}

    @staticmethod
    async def _async(compute: Callable[[], _T]) -> _T:
        """Run ``compute`` as a coroutine (on the state's loop, through :meth:`_on_loop`)."""
        return compute()

    def _on_loop(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the state's loop (the storage lives there) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_TIMEOUT)


def _utf8(path: str) -> str:
    """WSGI paths are UTF-8 bytes read as latin-1; decode them as UTF-8 when they are."""
    try:
        return path.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return path


def _json(status: int, document: Any) -> Response:
    body = json.dumps(document, allow_nan=False).encode()
    return status, [("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                    *_SECURITY_HEADERS], body


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values and values[0] else None


def _window(params: dict[str, list[str]]) -> str:
    window = _one(params, "window") or "1h"
    if window not in WINDOWS:
        msg = f"window {window!r} is not one of {', '.join(WINDOWS)}"
        raise ValueError(msg)
    return window


def _limit(params: dict[str, list[str]]) -> int:
    text = _one(params, "limit") or "100"
    if not text.isdigit() or not 1 <= int(text) <= _MAX_LIMIT:
        msg = f"limit {text!r} must be a whole number from 1 to {_MAX_LIMIT}"
        raise ValueError(msg)
    return int(text)
