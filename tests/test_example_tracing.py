"""examples/tracing_existing_setup.py, run as a subprocess: console output and OTLP export."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from _helpers import IN_CI

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tracing_existing_setup.py"
HAS_OTLP = importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None

# Trace ids are T<n>, span ids S<n>, numbered in order of appearance.
EXPECTED_SPANS = """\
span 'POST /orders' kind=SERVER trace=T1 id=S1 parent=- status=UNSET events=omniq.task.enqueued
span 'POST /orders' kind=SERVER trace=T2 id=S2 parent=- status=UNSET events=omniq.task.enqueued
span 'process orders' kind=CONSUMER trace=T1 id=S3 parent=S1 status=UNSET events=- \
messaging.message.id=order-1 omniq.task.attempt=1
span 'process orders' kind=CONSUMER trace=T2 id=S4 parent=S2 status=ERROR events=exception \
messaging.message.id=order-2 omniq.task.attempt=1 error.type=ConnectionError
span 'process orders' kind=CONSUMER trace=T2 id=S5 parent=S2 status=UNSET \
events=omniq.task.retried messaging.message.id=order-2 omniq.task.attempt=2
handled 9 events
"""


def normalize(text: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """Replace hex ids by T<n>/S<n>; return the text and the id -> name maps."""
    traces: dict[str, str] = {}
    spans: dict[str, str] = {}

    def trace_id(m: re.Match[str]) -> str:
        return "trace=" + traces.setdefault(m.group(1), f"T{len(traces) + 1}")

    def span_id(m: re.Match[str]) -> str:
        return m.group(1) + "=" + spans.setdefault(m.group(2), f"S{len(spans) + 1}")

    text = re.sub(r"trace=([0-9a-f]{32})", trace_id, text)
    text = re.sub(r"\b(id|parent)=([0-9a-f]{16})\b", span_id, text)
    return text, traces, spans


class _Collector(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        _Collector.bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[bytes]]]:
    _Collector.bodies = []
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/traces", _Collector.bodies
    finally:
        server.shutdown()
        server.server_close()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, **(env or {})}, check=False,
    )


def test_task_spans_join_the_request_traces_on_console_and_otlp(
    collector: tuple[str, list[bytes]],
) -> None:
    if not HAS_OTLP:
        message = "the otlp extra is not installed (pip install -e '.[otlp]')"
        if IN_CI:
            pytest.fail(message + " (CI=true: nothing may be skipped)")
        pytest.skip(message)
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    endpoint, bodies = collector
    result = run(str(EXAMPLE), env={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint})
    assert result.returncode == 0, result.stderr
    text, traces, spans = normalize(result.stdout)
    assert text == "otlp: exporting\n" + EXPECTED_SPANS
    assert result.stderr == ""

    exported = []
    for body in bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    exported.append((
                        service["service.name"],
                        scope_spans.scope.name,
                        span.name,
                        traces[span.trace_id.hex()],
                        spans[span.span_id.hex()],
                        spans[span.parent_span_id.hex()] if span.parent_span_id else "-",
                    ))
    assert sorted(exported) == [
        ("shop", "omniq_observe", "process orders", "T1", "S3", "S1"),
        ("shop", "omniq_observe", "process orders", "T2", "S4", "S2"),
        ("shop", "omniq_observe", "process orders", "T2", "S5", "S2"),
        ("shop", "shop.web", "POST /orders", "T1", "S1", "-"),
        ("shop", "shop.web", "POST /orders", "T2", "S2", "-"),
    ]


def test_without_the_otlp_extra_the_console_still_works() -> None:
    hide_otlp = (
        "import sys, runpy; "
        "sys.modules['opentelemetry.exporter.otlp.proto.http.trace_exporter'] = None; "
        f"runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')"
    )
    result = run("-c", hide_otlp)
    assert result.returncode == 0, result.stderr
    text, _, _ = normalize(result.stdout)
    assert text == "otlp: not installed (pip install 'omniq-observe[otlp]')\n" + EXPECTED_SPANS
