"""The exporter over real HTTP(S): /metrics negotiation and gzip, /healthz, auth, TLS, ASGI."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import IN_CI
from prometheus_client import CollectorRegistry, Counter

from omniq_observe.events.processor import ProcessorStats
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.exporter import (
    MetricsServer,
    ProcessorHealth,
    make_asgi_app,
    make_wsgi_app,
    start_http_server,
)


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("omniq_test_hits", "Hits.", registry=registry).inc(3)
    return registry


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[MetricsServer]:
    srv = start_http_server(0, registry=registry)
    yield srv
    srv.close()


def get(
    url: str, headers: dict[str, str] | None = None, context: Any = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_binds_loopback_by_default_and_serves_text(server: MetricsServer) -> None:
    assert server.server.server_address[0] == "127.0.0.1"
    status, headers, body = get(f"{server.url}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    assert "omniq_test_hits_total 3.0" in body.decode()


def test_openmetrics_is_negotiated_and_gzip_applied(server: MetricsServer) -> None:
    status, headers, body = get(
        f"{server.url}/metrics",
        {"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"},
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(body).decode()
    assert "omniq_test_hits_total 3.0" in text
    assert text.endswith("# EOF\n")


def test_healthz_and_unknown_paths(registry: CollectorRegistry) -> None:
    stats = ProcessorStats()
    srv = start_http_server(0, registry=registry, health=ProcessorHealth(stats, max_lag=30))
    try:
        status, _, body = get(f"{srv.url}/healthz")
        assert (status, json.loads(body)) == (
            503, {"status": "unhealthy", "reason": "processor loop is not running"}
        )
        stats.running = True
        assert get(f"{srv.url}/healthz")[:1] == (200,)
        assert json.loads(get(f"{srv.url}/healthz")[2]) == {"status": "ok"}
        stats.caught_up = False
        stats.last_event_timestamp = 0.0  # 1970: far behind
        status, _, body = get(f"{srv.url}/healthz")
        assert status == 503
        assert json.loads(body)["reason"].startswith("processor lag ")
        assert get(f"{srv.url}/nothing")[0] == 404
    finally:
        srv.close()


def test_basic_auth_protects_metrics_only(registry: CollectorRegistry) -> None:
    srv = start_http_server(0, registry=registry, basic_auth=("prom", "s3cret"))
    try:
        status, headers, _ = get(f"{srv.url}/metrics")
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Basic")
        wrong = base64.b64encode(b"prom:nope").decode()
        assert get(f"{srv.url}/metrics", {"Authorization": f"Basic {wrong}"})[0] == 401
        right = base64.b64encode(b"prom:s3cret").decode()
        assert get(f"{srv.url}/metrics", {"Authorization": f"Basic {right}"})[0] == 200
        assert get(f"{srv.url}/healthz")[0] == 200
    finally:
        srv.close()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        if IN_CI:
            pytest.fail("openssl is required in CI to test TLS")
        pytest.skip("openssl CLI not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_tls_with_a_self_signed_certificate(registry: CollectorRegistry, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    srv = start_http_server(0, registry=registry, certfile=str(cert), keyfile=str(key))
    try:
        assert srv.url.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        status, _, body = get(f"{srv.url}/metrics", context=trusted)
        assert status == 200
        assert b"omniq_test_hits_total 3.0" in body
        with pytest.raises(urllib.error.URLError):
            get(f"{srv.url}/metrics", context=ssl.create_default_context())  # untrusted
    finally:
        srv.close()


def test_tls_settings_are_checked(registry: CollectorRegistry, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="certfile and keyfile"):
        start_http_server(0, registry=registry, certfile="x.pem")
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="cannot load TLS certificate"):
        start_http_server(
            0, registry=registry, certfile=str(tmp_path / "bad.pem"),
            keyfile=str(tmp_path / "bad.pem"),
        )


def test_wsgi_app_answers_like_the_server(registry: CollectorRegistry) -> None:
    app = make_wsgi_app(registry, health=lambda: (False, "maintenance"))
    seen: list[Any] = []

    def call(path: str) -> tuple[str, bytes]:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": ""}
        body = b"".join(app(environ, lambda status, headers: seen.append((status, headers))))
        return seen[-1][0], body

    status, body = call("/metrics")
    assert status == "200 OK"
    assert b"omniq_test_hits_total 3.0" in body
    status, body = call("/healthz")
    assert (status, json.loads(body)) == (
        "503 Service Unavailable", {"status": "unhealthy", "reason": "maintenance"}
    )


def test_asgi_app_answers_like_the_server(registry: CollectorRegistry) -> None:
    app = make_asgi_app(registry)

    async def call(path: str, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "query_string": b"",
                 "headers": headers}
        await app(scope, receive, send)
        return sent

    start, body = asyncio.run(call("/metrics", [(b"accept-encoding", b"gzip")]))
    assert start["status"] == 200
    assert (b"content-encoding", b"gzip") in start["headers"]
    assert b"omniq_test_hits_total 3.0" in gzip.decompress(body["body"])
    start, body = asyncio.run(call("/healthz", []))
    assert (start["status"], json.loads(body["body"])) == (200, {"status": "ok"})
