"""The exporter's server under adversarial load: silent TLS clients, 200 concurrent
scrapes, idle connections (no thread each, timed out, capped), auth scheme case, routes."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _helpers import wait_until
from prometheus_client import CollectorRegistry
from test_exporter import get, self_signed
from test_serve import Serve

from omniq_observe._http_server import ServerLimits
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.exporter import MetricsServer, make_wsgi_app, start_http_server

pytest_plugins = ["test_exporter"]  # its registry and server fixtures


def silent_clients(port: int, count: int) -> list[socket.socket]:
    """Connect ``count`` clients that send nothing."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (recv sees EOF or a reset)."""
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def serve_ready(serve: Serve, url: str, context: Any = None) -> None:
    def answered() -> bool:
        assert serve.popen.poll() is None, serve.output()
        try:
            return get(url, context=context)[0] == 200
        except OSError:
            return False

    wait_until(answered, timeout=30, what="serve to listen")


def test_a_silent_client_does_not_freeze_the_https_serve(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    serve = Serve(tmp_path, "--certfile", str(cert), "--keyfile", str(key))
    trusted = ssl.create_default_context(cafile=str(cert))
    url = f"https://127.0.0.1:{serve.port}/healthz"
    try:
        serve_ready(serve, url, trusted)
        # more silent clients than worker threads: none of them may hold a worker
        quiet = silent_clients(serve.port, ServerLimits.workers * 4)
        started = time.monotonic()
        status, _, body = get(url, context=trusted)  # 10 s timeout; hung forever before
        assert (status, body) == (200, b'{"status": "ok"}\n')
        assert time.monotonic() - started < 3.0
        for sock in quiet:
            sock.close()
    finally:
        assert serve.stop() == 0, serve.output()


def test_200_concurrent_scrapes_of_serve_are_all_answered(tmp_path: Path) -> None:
    serve = Serve(tmp_path)
    url = f"http://127.0.0.1:{serve.port}/metrics"
    try:
        serve_ready(serve, url)
        barrier = threading.Barrier(200, timeout=30)
        statuses: list[int] = []
        lock = threading.Lock()

        def scrape() -> None:
            barrier.wait()
            with urllib.request.urlopen(url, timeout=30) as response:
                response.read()
                with lock:
                    statuses.append(response.status)

        threads = [threading.Thread(target=scrape) for _ in range(200)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert statuses == [200] * 200
    finally:
        assert serve.stop() == 0, serve.output()


def test_idle_connections_cost_no_thread(server: MetricsServer) -> None:
    before = threading.active_count()
    quiet = silent_clients(server.port, 300)
    try:
        assert get(f"{server.url}/healthz")[0] == 200
        assert threading.active_count() == before
    finally:
        for sock in quiet:
            sock.close()


def test_idle_connections_time_out_and_are_capped(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ServerLimits, "idle_timeout", 0.5)
    monkeypatch.setattr(ServerLimits, "max_idle", 3)
    srv = start_http_server(0, registry=registry)
    try:
        first = silent_clients(srv.port, 2)
        wait_until(lambda: all(closed_by_server(s) for s in first), timeout=5,
                   what="idle connections to time out")
        quiet = silent_clients(srv.port, 5)
        # the two oldest make room for the newest three; a scrape still gets through
        wait_until(lambda: closed_by_server(quiet[0]) and closed_by_server(quiet[1]),
                   timeout=5, what="the oldest idle connections to be closed")
        assert not any(closed_by_server(s) for s in quiet[2:])
        assert get(f"{srv.url}/metrics")[0] == 200
        for sock in first + quiet:
            sock.close()
    finally:
        srv.close()


def test_a_stalled_tls_handshake_is_dropped(
    registry: CollectorRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ServerLimits, "handshake_timeout", 0.3)
    cert, key = self_signed(tmp_path)
    srv = start_http_server(0, registry=registry, certfile=str(cert), keyfile=str(key))
    try:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        wait_until(lambda: closed_by_server(sock), timeout=5, what="the handshake timeout")
        sock.close()
        trusted = ssl.create_default_context(cafile=str(cert))
        assert get(f"{srv.url}/metrics", context=trusted)[0] == 200
    finally:
        srv.close()


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC", "bAsIc"])
def test_basic_auth_scheme_is_case_insensitive(registry: CollectorRegistry, scheme: str) -> None:
    srv = start_http_server(0, registry=registry, basic_auth=("prom", "s3cret"))
    token = base64.b64encode(b"prom:s3cret").decode()
    try:
        assert get(f"{srv.url}/metrics", {"Authorization": f"{scheme} {token}"})[0] == 200
        assert get(f"{srv.url}/metrics", {"Authorization": f"Bearer {token}"})[0] == 401
        assert get(f"{srv.url}/metrics", {"Authorization": f"{scheme}{token}"})[0] == 401
    finally:
        srv.close()


def page(text: str) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{text} {environ['PATH_INFO']}".encode()]

    return app


def test_routes_are_served_behind_the_same_auth(registry: CollectorRegistry) -> None:
    routes = {"/": page("home"), "/api/": page("api"), "/api/tasks/": page("tasks")}
    srv = start_http_server(0, registry=registry, basic_auth=("prom", "s3cret"), routes=routes)
    auth = {"Authorization": "Basic " + base64.b64encode(b"prom:s3cret").decode()}
    try:
        assert get(f"{srv.url}/", auth)[2] == b"home /"
        assert get(f"{srv.url}/api/queues", auth)[2] == b"api /api/queues"
        assert get(f"{srv.url}/api/tasks/t1", auth)[2] == b"tasks /api/tasks/t1"
        assert get(f"{srv.url}/elsewhere", auth)[0] == 404
        assert b"omniq_test_hits_total 3.0" in get(f"{srv.url}/metrics", auth)[2]
        assert get(f"{srv.url}/api/queues")[0] == 401
        assert get(f"{srv.url}/healthz")[0] == 200
    finally:
        srv.close()


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "relative", 3])
def test_routes_cannot_take_the_exporters_paths(path: Any) -> None:
    with pytest.raises(ConfigurationError, match="routes"):
        make_wsgi_app(CollectorRegistry(), routes={path: page("x")})
