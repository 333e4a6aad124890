"""The web view of ``serve`` in a real headless Chromium, against a real ``serve``
subprocess on a demo SQLite store: the numbers equal ``stats --json``, the overview
updates live, tasks open by prefix, stored script payloads stay text, basic auth holds."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from _browser import chromium, require_browser
from _cli import cli, popen, url
from _cli import store as append
from _helpers import free_port, wait_until
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from omniq_observe.backend import SQLiteBackend
from omniq_observe.models.event import TaskEvent
from omniq_observe.web.app import CONTENT_SECURITY_POLICY

TRACE_URL = "http://127.0.0.1:16686/trace/{trace_id}"
EVIL_QUEUE = '<img src=x onerror="window.__pwned=6;alert(6)">'
EVIL_ID = '"><img src=x onerror=alert(7)>-task'
SCRIPT = "<script>window.__pwned=1;alert(1)</script>"
IMG = '"><img src=x onerror="window.__pwned=2;alert(2)">'
JS_URL = "javascript:window.__pwned=3;alert(3)"


def evil_events() -> list[TaskEvent]:
    """One task whose queue, id, details, error and traceback carry script payloads."""
    now = datetime.now(timezone.utc).timestamp() - 30
    at = [datetime.fromtimestamp(now + s, timezone.utc) for s in (0.0, 0.5, 2.0)]
    details = {"queue_name": EVIL_QUEUE, "note": SCRIPT, "html": IMG, "link": JS_URL,
               "nested": {"href": JS_URL, "list": [SCRIPT]}, "password": "hunter2"}
    return [
        TaskEvent(task_id=EVIL_ID, event_type="ENQUEUED", timestamp=at[0], details=details,
                  trace_context={"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}),
        TaskEvent(task_id=EVIL_ID, event_type="STARTED", timestamp=at[1],
                  details={"worker_id": IMG, "attempt": 1}),
        TaskEvent(task_id=EVIL_ID, event_type="FAILED", timestamp=at[2],
                  details={"error": f"ValueError: {SCRIPT}", "error_type": "ValueError",
                           "traceback": f"Traceback (most recent call last):\n  {IMG}\n{JS_URL}"}),
    ]


def fetch(address: str, auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(address)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class Serve:
    """A ``serve`` subprocess and its base URL."""

    def __init__(self, store: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = ["serve", "--storage", url(store), "--port", str(self.port), "--name",
                f"web-{self.port}", "--log-level", "warning", *extra]
        if env:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "omniq_observe", *args], env=env, text=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        else:
            self.process = popen(*args, stdout=subprocess.DEVNULL)
        wait_until(self._up, timeout=30, interval=0.05, what="serve to answer /healthz")

    def _up(self) -> bool:
        if self.process.poll() is not None:
            stderr = self.process.stderr.read() if self.process.stderr else ""
            pytest.fail(f"serve exited {self.process.returncode}: {stderr}")
        try:
            return fetch(self.base + "/healthz")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=20) == 0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("web") / "demo.db"
    done = cli("demo", "--storage", url(path), "--tasks", "400", "--seed", "13", "--json")
    assert done.returncode == 0, done.stderr
    append(path, evil_events())
    return path


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[Serve]:
    serve = Serve(store, "--trace-url", TRACE_URL)
    wait_until(lambda: api(serve, "/api/queues")["loaded"], timeout=30, what="history loaded")
    yield serve
    serve.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    require_browser()
    with chromium() as driver:
        yield driver


def api(serve: Serve, path: str) -> Any:
    status, _, body = fetch(serve.base + path)
    assert status == 200, body
    return json.loads(body)


def stats(store: Path) -> dict[str, Any]:
    done = cli("stats", "--storage", url(store), "--json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def open_page(driver: WebDriver, address: str) -> None:
    driver.get(address)
    wait_until(lambda: driver.execute_script("return document.body.dataset.loaded") == "true",
               timeout=15, interval=0.05, what=f"{address} to load")


def seconds_text(value: float | None) -> str:
    """The page's duration format (common.js ``seconds``) for values under a minute."""
    if value is None:
        return "\u2013"
    if value == 0:
        return "0 s"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


class Cell:
    """One table cell as shown: its text and its exact value (``data-value``)."""

    def __init__(self, text: str, raw: str | None) -> None:
        self.text = text
        self.value = None if raw is None else json.loads(raw)


_ROWS = """
return Array.from(document.querySelectorAll('#queues tbody tr[data-queue]')).map(r => [
  r.dataset.queue,
  Array.from(r.cells).map(c => [c.innerText, c.getAttribute('data-value')])]);
"""


def overview(driver: WebDriver) -> dict[str, list[Cell]]:
    """The overview table, read in one go (the page re-renders as data changes)."""
    rows = driver.execute_script(_ROWS)
    return {queue: [Cell(text, raw) for text, raw in row] for queue, row in rows}


def value(cell: Cell) -> Any:
    return cell.value


def no_script_ran(driver: WebDriver) -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 - raises when no alert is open
    assert driver.execute_script("return window.__pwned === undefined") is True
    assert driver.find_elements(By.TAG_NAME, "img") == []
    scripts = driver.execute_script(
        "return Array.from(document.scripts).map(s => s.getAttribute('src'))")
    assert None not in scripts and all(s.startswith("/static/") for s in scripts)
    assert driver.find_elements(By.CSS_SELECTOR, "a[href^='javascript:' i]") == []


def test_overview_numbers_equal_stats(server: Serve, browser: WebDriver, store: Path) -> None:
    expected = stats(store)
    open_page(browser, server.base + "/?window=24h")
    shown = overview(browser)
    assert set(shown) == set(expected["queues"])
    for queue, figures in expected["queues"].items():
        row = shown[queue]
        assert row[0].text == queue
        assert value(row[1]) == figures["total"] and row[1].text == str(figures["total"])
        assert value(row[2]) == figures["total"] / 86400
        assert value(row[4]) == figures["counts"]["COMPLETED"] / 86400
        failed = figures["counts"]["FAILED"] + figures["counts"]["TIMEOUT"]
        assert value(row[5]) == failed / 86400
        assert value(row[6]) == figures["success_ratio"]
        assert row[6].text == f"{figures['success_ratio'] * 100:.1f} %"
        for cell, expected_value in ((row[7], figures["duration_seconds"]["p50"]),
                                     (row[8], figures["duration_seconds"]["p95"]),
                                     (row[9], figures["queue_wait_seconds"]["p95"])):
            assert value(cell) == expected_value
            if expected_value is None or expected_value < 60:
                assert cell.text == seconds_text(expected_value)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-done canvas")) == 1


def test_failures_page_numbers_and_filter(
    server: Serve, browser: WebDriver, store: Path
) -> None:
    expected = stats(store)["queues"]
    failed = {q: f["counts"]["FAILED"] + f["counts"]["TIMEOUT"] for q, f in expected.items()}
    open_page(browser, server.base + "/failures?window=24h")
    total = browser.find_element(By.ID, "failure-total")
    assert int(total.text) == sum(failed.values())
    options = {o.get_attribute("value"): o.text
               for o in browser.find_elements(By.CSS_SELECTOR, "#filter-queue option")}
    assert options == {"": "all", **{q: f"{q} ({n})" for q, n in failed.items() if n}}
    busiest = max(failed, key=lambda q: failed[q])
    browser.find_element(By.CSS_SELECTOR, f"#filter-queue option[value='{busiest}']").click()
    wait_until(lambda: {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".failure .queue")}
               == {busiest}, timeout=10, what="the queue filter")
    stamps = browser.execute_script(
        "return Array.from(document.querySelectorAll('li.failure .when')).map(e => e.innerText)")
    assert len(stamps) == min(100, failed[busiest])
    assert stamps == sorted(stamps, reverse=True)  # newest first
    link = browser.find_element(By.CSS_SELECTOR, "li.failure a.mono")
    task_id = link.text
    link.click()
    wait_until(lambda: browser.find_elements(By.ID, "task-id"), timeout=10, what="task page")
    assert browser.find_element(By.ID, "task-id").text == task_id
    assert browser.find_element(By.ID, "task-queue").text == busiest


def test_task_opens_by_8_char_prefix(server: Serve, browser: WebDriver, store: Path) -> None:
    failures = api(server, "/api/failures?window=24h&limit=10")["failures"]
    task_id = next(f["task_id"] for f in failures if f["task_id"] != EVIL_ID)  # a uuid4
    history = asyncio.run(_history(store, task_id))
    open_page(browser, server.base + "/tasks/" + task_id[:8])
    assert browser.find_element(By.ID, "task-id").text == task_id
    assert browser.current_url == server.base + "/tasks/" + task_id
    rows = browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")
    assert [r.get_attribute("data-event-id") for r in rows] == [e.event_id for e in history]
    starts = sum(1 for e in history if e.event_type == "STARTED")
    assert int(browser.find_element(By.ID, "task-attempts").text) == starts
    bars = browser.find_elements(By.CSS_SELECTOR, "#timeline rect.bar")
    waits = sum(1 for e in history if e.event_type in ("ENQUEUED", "RETRIED"))
    assert len(bars) == starts + waits
    trace = browser.find_element(By.CSS_SELECTOR, "a.trace")
    trace_id = history[0].trace_context["traceparent"].split("-")[1]
    assert trace.get_attribute("href") == TRACE_URL.format(trace_id=trace_id)
    # the search box takes a prefix too
    box = browser.find_element(By.ID, "search-input")
    box.clear()
    box.send_keys(task_id[:8] + "\n")
    wait_until(lambda: browser.current_url == server.base + "/tasks/" + task_id, timeout=10)


async def _history(store: Path, task_id: str) -> list[TaskEvent]:
    async with SQLiteBackend(store) as storage:
        return await storage.task_history(task_id)


def test_overview_updates_after_events_from_another_process(
    server: Serve, browser: WebDriver, store: Path
) -> None:
    open_page(browser, server.base + "/?window=5m")
    assert "live-queue" not in overview(browser)
    writer = (
        "import sys\n"
        "from omniq_observe.backend import SQLiteBackend\n"
        "from omniq_observe.events import EventLogger\n"
        "from omniq_observe.models.event import TaskEvent\n"
        "logger = EventLogger(event_storage=SQLiteBackend(sys.argv[1]))\n"
        "for kind, details in (('ENQUEUED', {'queue_name': 'live-queue'}),\n"
        "                      ('STARTED', {'worker_id': 'w1'}), ('COMPLETED', {})):\n"
        "    logger.log_event(TaskEvent(task_id='live-1', event_type=kind, details=details))\n"
        "logger.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", writer, str(store)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    tds = wait_until(lambda: overview(browser).get("live-queue"),
                     timeout=15, what="the new queue to appear without a reload")
    assert value(tds[1]) == 3
    assert value(tds[4]) == 1 / 300
    assert value(tds[6]) == 1.0
    figures = stats(store)["queues"]["live-queue"]
    assert value(tds[7]) == figures["duration_seconds"]["p50"]


def test_script_payloads_show_as_text(server: Serve, browser: WebDriver) -> None:
    open_page(browser, server.base + "/?window=24h")
    assert overview(browser)[EVIL_QUEUE][0].text == EVIL_QUEUE
    no_script_ran(browser)
    query = urllib.parse.urlencode({"window": "24h", "queue": EVIL_QUEUE})
    open_page(browser, server.base + "/failures?" + query)
    item = browser.find_element(By.CSS_SELECTOR, "li.failure")
    assert item.find_element(By.CSS_SELECTOR, ".error").text == f"ValueError: {SCRIPT}"
    assert IMG.strip() in item.find_element(By.CSS_SELECTOR, "pre.traceback").text
    assert item.find_element(By.CSS_SELECTOR, "a.mono").text == EVIL_ID
    no_script_ran(browser)
    item.find_element(By.CSS_SELECTOR, "a.mono").click()
    wait_until(lambda: browser.find_elements(By.ID, "task-id"), timeout=10, what="task page")
    assert browser.find_element(By.ID, "task-id").text == EVIL_ID
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('#events dd')).map(d => [d.dataset.key,"
        " d.textContent])")
    first = dict(shown[:6])
    assert first == {"queue_name": EVIL_QUEUE, "note": SCRIPT, "html": IMG, "link": JS_URL,
                     "nested": json.dumps({"href": JS_URL, "list": [SCRIPT]}, indent=2),
                     "password": "[REDACTED]"}
    assert dict(shown[6:8]) == {"worker_id": IMG, "attempt": "1"}
    assert "hunter2" not in browser.find_element(By.TAG_NAME, "body").text
    no_script_ran(browser)
    for path in ("/", "/failures", "/tasks/x", "/static/web.css", "/api/queues"):
        headers = fetch(server.base + path)[1]
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert "'unsafe-inline'" not in headers["Content-Security-Policy"]


def test_api_errors_name_the_value(server: Serve) -> None:
    status, _, body = fetch(server.base + "/api/queues?window=7m")
    assert (status, json.loads(body)) == (400, {"error": "window '7m' is not one of 5m, 1h, 24h"})
    status, _, body = fetch(server.base + "/api/failures?limit=0")
    assert status == 400 and "limit '0'" in json.loads(body)["error"]
    status, _, body = fetch(server.base + "/api/tasks/no-such-task")
    assert status == 404 and "no-such-task" in json.loads(body)["error"]
    status, _, body = fetch(server.base + "/api/tasks/")
    assert status == 404
    with urllib.request.urlopen(server.base + "/tasks?q=a%2Fb+c", timeout=10) as response:
        assert response.url == server.base + "/tasks/a%2Fb%20c"  # the search form's target
        assert b'data-page="task"' in response.read()
    request = urllib.request.Request(server.base + "/api/queues", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 405


def test_basic_auth_guards_every_page_and_route(
    store: Path, browser: WebDriver, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    env["OMNIQ_OBSERVE_BASIC_AUTH"] = "ops:s3cret"
    serve = Serve(store, env=env)
    try:
        for path in ("/", "/failures", "/tasks/abc", "/static/web.css", "/api/queues",
                     "/api/failures", "/api/tasks/abc", "/metrics"):
            assert fetch(serve.base + path)[0] == 401, path
            assert fetch(serve.base + path, ("ops", "wrong"))[0] == 401, path
            assert fetch(serve.base + path, ("ops", "s3cret"))[0] in (200, 404), path
        assert fetch(serve.base + "/api/queues", ("ops", "s3cret"))[0] == 200
        assert fetch(serve.base + "/healthz")[0] == 200
        browser.get(serve.base + "/")
        assert browser.find_elements(By.ID, "queues") == []  # no page without credentials
        # as after the browser's login prompt: Authorization on every request
        token = base64.b64encode(b"ops:s3cret").decode()
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                                {"headers": {"Authorization": f"Basic {token}"}})
        open_page(browser, serve.base + "/?window=24h")
        assert set(overview(browser)) == set(stats(store)["queues"])
    finally:
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
        serve.stop()


def test_no_web_serves_metrics_only(store: Path) -> None:
    serve = Serve(store, "--no-web")
    try:
        status, headers, body = fetch(serve.base + "/")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert b"omniq_observe_events_processed_total" in body
        for path in ("/failures", "/api/queues", "/static/web.css"):
            assert fetch(serve.base + path)[0] == 404, path
    finally:
        serve.stop()


def test_bad_trace_url_is_refused(store: Path) -> None:
    done = cli("serve", "--storage", url(store), "--port", str(free_port()),
               "--trace-url", "javascript:alert({trace_id})")
    assert done.returncode == 2
    assert "trace_url 'javascript:alert({trace_id})'" in done.stderr
