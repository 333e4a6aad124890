"""``omniq-observe serve``: a processor with Prometheus and structlog handlers, and /metrics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import ssl
import sys
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from omniq_observe.backend import BaseEventStorage, from_url
from omniq_observe.cli._common import (
    TCP_PORT,
    CommandError,
    add_storage_argument,
    address_error,
    env_default,
    env_flag,
)
from omniq_observe.cli._run import check_reachable
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.exporter import MetricsServer, ProcessorHealth, start_http_server
from omniq_observe.handlers.logs import StructlogHandler
from omniq_observe.handlers.prometheus import PrometheusHandler
from omniq_observe.web import WebState, WebView

__all__ = ["DEFAULT_PORT", "register", "run", "run_server"]

DEFAULT_PORT = 9464
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_CONNECT_TIMEOUT = 10.0

DESCRIPTION = """\
Process stored events with a Prometheus handler and serve /metrics and /healthz.

Every flag has an OMNIQ_OBSERVE_* environment variable (--port <- OMNIQ_OBSERVE_PORT);
OMNIQ_OBSERVE_BASIC_AUTH=user:password protects /metrics (an environment variable only,
to keep the password out of ps). SIGTERM or SIGINT: the batch in flight finishes and its
checkpoint is committed, then the command exits 0.

Logging: by default serve logs its own start and stop and its problems (storage errors,
failing handlers), never one line per event. --log-events, or --log-level debug, adds one
line per task event."""

EXAMPLES = """\
examples:
  omniq-observe serve
      /metrics and /healthz on http://127.0.0.1:9464 for ./omniq-events.db
  omniq-observe serve --storage redis://localhost:6379/0 --name metrics --port 9465
  omniq-observe serve --host 0.0.0.0 --log-format json
      for a Prometheus in another container or host; JSON log lines
  omniq-observe serve --log-events
      also one log line per task event
  OMNIQ_OBSERVE_BASIC_AUTH=prom:secret omniq-observe serve --certfile c.pem --keyfile k.pem
"""


def register(subparsers: Any) -> None:
    """Add the ``serve`` command."""
    parser = subparsers.add_parser(
        "serve",
        help="process stored events and serve Prometheus metrics on /metrics",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_storage_argument(parser)
    parser.add_argument("--host", default=env_default("host", "127.0.0.1"),
                        help="address to bind (env OMNIQ_OBSERVE_HOST; default 127.0.0.1; "
                             "0.0.0.0 for every interface)")
    parser.add_argument("--port", type=TCP_PORT, default=env_default("port", str(DEFAULT_PORT)),
                        help=f"port (env OMNIQ_OBSERVE_PORT; default {DEFAULT_PORT})")
    parser.add_argument("--name", default=env_default("name", "default"),
                        help="processor name, its checkpoint (env OMNIQ_OBSERVE_NAME; "
                        "default default)")
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        default=env_default("log_format", "console"),
                        help="log lines as json or console (env OMNIQ_OBSERVE_LOG_FORMAT; "
                        "default console)")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS,
                        default=env_default("log_level", "info").lower(),
                        help="lowest level logged; debug adds one line per task event "
                        "(env OMNIQ_OBSERVE_LOG_LEVEL; default info)")
    parser.add_argument("--log-events", action="store_true",
                        default=env_flag("log_events"),
                        help="log one line per task event (env OMNIQ_OBSERVE_LOG_EVENTS; "
                        "default off: lifecycle and problems only)")
    parser.add_argument("--certfile", default=env_default("certfile"),
                        help="PEM certificate to serve HTTPS (env OMNIQ_OBSERVE_CERTFILE; "
                        "default none: plain HTTP)")
    parser.add_argument("--keyfile", default=env_default("keyfile"),
                        help="PEM private key of --certfile (env OMNIQ_OBSERVE_KEYFILE; "
                        "default none)")
    parser.add_argument("--max-lag", type=float, default=float(env_default("max_lag", "60")),
                        help="/healthz is 503 above this lag, seconds (env "
                        "OMNIQ_OBSERVE_MAX_LAG; default 60)")
    parser.add_argument("--no-web", action="store_true",
                        default=env_flag("no_web"),
                        help="serve /metrics only, without the web view at / "
                             "(env OMNIQ_OBSERVE_NO_WEB=1; default off: the web view is on)")
    parser.add_argument("--trace-url", default=env_default("trace_url"),
                        help="link trace ids on task pages to a trace UI, e.g. "
                             "http://127.0.0.1:16686/trace/{trace_id} "
                             "(env OMNIQ_OBSERVE_TRACE_URL; default none: no links)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``serve`` until SIGTERM/SIGINT; return 0."""
    basic_auth = None
    credentials = env_default("basic_auth")
    if credentials:
        user, sep, password = credentials.partition(":")
        if not sep or not user or not password:
            msg = "OMNIQ_OBSERVE_BASIC_AUTH must be user:password"
            raise CommandError(msg)
        basic_auth = (user, password)
    asyncio.run(
        run_server(
            args.storage, host=args.host, port=int(args.port), name=args.name,
            log_format=args.log_format, log_level=args.log_level, certfile=args.certfile,
            keyfile=args.keyfile, basic_auth=basic_auth, max_lag=args.max_lag,
            log_events=args.log_events, web=not args.no_web, trace_url=args.trace_url,
        )
    )
    return 0


def configure_logging(log_format: str, log_level: str) -> None:
    """Configure structlog for the ``serve`` process (an application, so it may)."""
    if log_format not in LOG_FORMATS:
        msg = f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}"
        raise CommandError(msg)
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        msg = f"log level {log_level!r} is not one of {', '.join(LOG_LEVELS)}"
        raise CommandError(msg)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


async def run_server(
    storage: str | BaseEventStorage, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
    name: str = "default", log_format: str = "console", log_level: str = "info",
    stop: asyncio.Event | None = None, ready: Callable[[int], None] | None = None,
    certfile: str | None = None, keyfile: str | None = None,
    basic_auth: tuple[str, str] | None = None, max_lag: float = 60.0,
    log_events: bool = False, web: bool = True, trace_url: str | None = None,
) -> None:
    """Process events from ``storage`` with Prometheus and structlog handlers and serve
    /metrics and /healthz until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is None).

    Args:
        storage: a storage URL or a backend (a backend passed in is not closed here).
        host: the address to bind.
        port: the port; 0 picks a free one (``ready`` receives it).
        name: the processor name (its checkpoint).
        log_format: ``json`` or ``console``.
        log_level: the lowest level logged.
        stop: set it to stop; the batch in flight is committed first.
        ready: called with the bound port once the server listens.
        certfile: serve HTTPS with this PEM certificate (and ``keyfile``).
        keyfile: the certificate's private key.
        basic_auth: (user, password) required for /metrics.
        max_lag: /healthz answers 503 above this many seconds of lag.
        log_events: log one line per task event; also on when ``log_level`` is debug.
            Off, only the server's lifecycle and problems are logged.
        web: serve the web view (``/``, ``/failures``, ``/tasks/<id>``, ``/api/...``).
        trace_url: a trace UI link template holding ``{trace_id}``, for task pages.

    Raises:
        ConfigurationError: ``trace_url`` is not an http(s) URL holding ``{trace_id}``.
        InvalidURLError: the URL is malformed.
        BackendUnavailableError: the backend cannot be reached.
        OSError: the address cannot be bound (an ``AddressError`` naming it and what to
            do), or a certificate file cannot be read.
    """
    configure_logging(log_format, log_level)
    log = structlog.get_logger("omniq_observe.serve")
    backend = from_url(storage) if isinstance(storage, str) else storage
    url = storage if isinstance(storage, str) else type(storage).__name__
    server = None
    try:
        await check_reachable(backend, url, _CONNECT_TIMEOUT)
        processor, registry = _processor(backend, name, log_events or log_level.lower() == "debug")
        view = WebView(WebState(backend), asyncio.get_running_loop(), trace_url) if web else None
        health = ProcessorHealth(processor.stats, max_lag=max_lag)
        server = _listen(host, port, registry, health, view, certfile, keyfile, basic_auth)
        log.info("omniq.serve_started", url=f"{server.url}/metrics", storage=url,
                 processor=name, web=f"{server.url}/" if web else None)
        if ready is not None:
            ready(server.port)
        await _process(processor, view, _stop_on_signals() if stop is None else stop)
        log.info("omniq.serve_stopped", processor=name, processed=processor.stats.processed)
    finally:
        if server is not None:
            server.close()
        if isinstance(storage, str):  # a backend passed in stays open
            await backend.close()


def _processor(
    backend: BaseEventStorage, name: str, log_events: bool
) -> tuple[AsyncEventProcessor, CollectorRegistry]:
    """The processor with its Prometheus handler (and structlog's when ``log_events``)."""
    processor = AsyncEventProcessor(event_storage=backend, name=name)
    registry = CollectorRegistry()
    processor.register_handler(PrometheusHandler(registry=registry))
    if log_events:
        processor.register_handler(StructlogHandler())
    return processor, registry


def _listen(
    host: str, port: int, registry: CollectorRegistry, health: ProcessorHealth,
    view: WebView | None, certfile: str | None, keyfile: str | None,
    basic_auth: tuple[str, str] | None,
) -> MetricsServer:
    """Serve /metrics, /healthz and the web view; an address that cannot be bound raises
    an ``AddressError`` saying what to do."""
    routes = None if view is None else view.routes()
    try:
        return start_http_server(port, host, registry, health=health, routes=routes,
                                 certfile=certfile, keyfile=keyfile, basic_auth=basic_auth)
    except OSError as exc:
        if exc.filename is not None or isinstance(exc, ssl.SSLError):
            raise  # a certificate or key file, not the address
        raise address_error(host, port, exc) from exc


async def _process(
    processor: AsyncEventProcessor, view: WebView | None, stop: asyncio.Event
) -> None:
    """Run the processor, and the web view's follower when there is one, until ``stop``."""
    following = None if view is None else asyncio.ensure_future(view.state.run(stop))
    try:
        await _run_until(processor, stop)
    finally:
        if following is not None:  # read-only: stopped at once, even mid-load
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)


async def _run_until(processor: AsyncEventProcessor, stop: asyncio.Event) -> None:
    """Run ``processor`` until ``stop`` is set; then let it commit and finish."""
    task = asyncio.ensure_future(processor.start())
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            await processor.stop()
        await task  # re-raises what ended the loop, if anything did


def _stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM and SIGINT set."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    return stop
