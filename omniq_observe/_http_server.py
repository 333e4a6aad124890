"""The exporter's HTTP(S) server: one accept loop, idle connections parked in a selector,
a bounded pool of worker threads.

Why not ``socketserver.ThreadingMixIn``: it starts a thread per connection (an idle
connection costs a thread), and a TLS-wrapped listening socket runs every handshake in
the accept loop, so one client that connects and sends nothing freezes the server.

Here a new connection costs a file descriptor until its first bytes arrive; it is then
handed to a worker, which runs the TLS handshake (under ``handshake_timeout``) and the
request (each read under ``request_timeout``). At most ``max_idle`` connections wait for
their first bytes, each for at most ``idle_timeout`` seconds (the oldest is closed first
when there are too many); at most ``max_pending`` ready connections wait for a worker.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import selectors
import socket
import ssl
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIServer

__all__ = ["BoundedWSGIServer", "ServerLimits"]


class ServerLimits:
    """The bounds of :class:`BoundedWSGIServer` (the defaults suit a scrape endpoint)."""

    backlog = 256
    workers = 8
    max_idle = 1024
    max_pending = 1024
    idle_timeout = 10.0
    handshake_timeout = 5.0
    request_timeout = 10.0


class BoundedWSGIServer(WSGIServer):
    """A WSGI server with a bounded worker pool and bounded, timed idle connections.

    ``ssl_context`` (set before ``serve_forever``) makes it serve HTTPS; the handshake
    runs in a worker, never in the accept loop.
    """

    request_queue_size = ServerLimits.backlog  # the listen backlog (socketserver reads it)
    limits = ServerLimits()
    ssl_context: ssl.SSLContext | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._idle: collections.OrderedDict[socket.socket, tuple[Any, float]] = (
            collections.OrderedDict()
        )
        self._ready: queue.Queue[tuple[socket.socket, Any] | None] = queue.Queue(
            self.limits.max_pending
        )
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._workers = [
            threading.Thread(target=self._work, name=f"omniq-http-{i}", daemon=True)
            for i in range(self.limits.workers)
        ]
        for worker in self._workers:
            worker.start()

    # -- the accept loop ----------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept connections and dispatch the ready ones until :meth:`shutdown`."""
        self._stopped.clear()
        self.socket.setblocking(False)
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.socket, selectors.EVENT_READ, None)
                while not self._stop.is_set():
                    for key, _ in selector.select(self._wait_time(poll_interval)):
                        if key.data is None:
                            self._accept(selector)
                        else:
                            self._dispatch(selector, key.fileobj)  # type: ignore[arg-type]
                    self._expire(selector, time.monotonic())
        finally:
            self._close_idle()
            self._stopped.set()

    def _wait_time(self, poll_interval: float) -> float:
        if not self._idle:
            return poll_interval
        _, deadline = next(iter(self._idle.values()))
        return max(0.0, min(poll_interval, deadline - time.monotonic()))

    def _accept(self, selector: selectors.BaseSelector) -> None:
        while True:
            try:
                conn, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE: keep serving the connections we have
                return
            conn.setblocking(False)
            if len(self._idle) >= self.limits.max_idle:
                oldest = next(iter(self._idle))
                selector.unregister(oldest)
                self._drop(oldest)
            self._idle[conn] = (address, time.monotonic() + self.limits.idle_timeout)
            selector.register(conn, selectors.EVENT_READ, address)

    def _dispatch(self, selector: selectors.BaseSelector, conn: socket.socket) -> None:
        selector.unregister(conn)
        address, _ = self._idle.pop(conn)
        try:
            self._ready.put_nowait((conn, address))
        except queue.Full:  # every worker busy and the queue full: shed this one
            _close(conn)

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        idle = self._idle
        while idle:
            conn, (_, deadline) = next(iter(idle.items()))
            if deadline > now:
                return
            selector.unregister(conn)
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        del self._idle[conn]
        _close(conn)

    def _close_idle(self) -> None:
        for conn in list(self._idle):
            self._drop(conn)

    # -- the workers --------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._ready.get()
            if item is None:
                return
            conn, address = item
            try:
                self._serve_connection(conn, address)
            except Exception:
                self.handle_error(conn, address)
            finally:
                _close(conn)

    def _serve_connection(self, conn: socket.socket, address: Any) -> None:
        conn.setblocking(True)
        conn.settimeout(self.limits.handshake_timeout)
        if self.ssl_context is not None:
            try:
                conn = self.ssl_context.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):  # a failed or too slow handshake: drop it
                return
        conn.settimeout(self.limits.request_timeout)
        try:
            self.finish_request(conn, address)
        except OSError:  # the client went away or timed out mid-request
            return
        finally:
            _shutdown(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore it: a broken connection must not flood the output or stop the server."""

    # -- stopping -----------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop the accept loop and wait for it to end (from another thread)."""
        self._stop.set()
        self._stopped.wait()

    def server_close(self) -> None:
        """Stop the workers (after their current request) and close the socket."""
        if not hasattr(self, "_workers"):  # the bind failed in __init__: nothing started
            super().server_close()
            return
        self._stop.set()
        for _ in self._workers:
            self._ready.put(None)
        for worker in self._workers:
            worker.join(timeout=self.limits.request_timeout)
        super().server_close()


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)


def _close(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.close()
