"""Take the README's screenshots of the web view: real renders in headless Chromium.

    python docs/screenshots.py            # writes docs/img/web-*.png

It writes a demo store (``omniq-observe demo``: 25 minutes of history, then live tasks)
into a temporary folder, serves it with ``demo --serve``, and saves the overview, the
failures page and one task's page (a task that failed once, then succeeded). Needs
Debian's ``chromium`` and ``chromium-driver`` and the test extra (selenium).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _browser import chromium  # noqa: E402

OUT = HERE / "img"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _wait(condition: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {condition}")


def _retried_task(base: str) -> str:
    for failure in _get(base + "/api/failures?window=1h&limit=200")["failures"]:  # type: ignore[index]
        task = _get(base + "/api/tasks/" + failure["task_id"])
        attempts = task["attempts"]  # type: ignore[index]
        if len(attempts) == 2 and attempts[-1]["status"] == "completed":
            return str(failure["task_id"])
    raise SystemExit("no task that failed once, then succeeded")


def _shoot(driver: object, url: str, name: str, height: int) -> None:
    driver.set_window_size(1360, height)  # type: ignore[attr-defined]
    driver.get(url)  # type: ignore[attr-defined]
    _wait(lambda: driver.execute_script(  # type: ignore[attr-defined]
        "return document.body.dataset.loaded === 'true'"))
    time.sleep(1.0)  # a picture, not a test: let the plots settle after their first draw
    driver.save_screenshot(str(OUT / f"web-{name}.png"))  # type: ignore[attr-defined]
    print(f"wrote docs/img/web-{name}.png")


def main() -> int:
    OUT.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="omniq-screens-"))
    port = _port()
    base = f"http://127.0.0.1:{port}"
    demo = subprocess.Popen(
        [sys.executable, "-m", "omniq_observe", "demo", "--storage",
         f"sqlite:///{folder / 'demo.db'}", "--tasks", "3000", "--rate", "2", "--queues", "5",
         "--seed", "3", "--serve", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: _get(base + "/api/queues")["loaded"])  # type: ignore[index]
        time.sleep(5)  # a few seconds of live tasks, so some are running
        task = _retried_task(base)
        with chromium() as driver:
            _shoot(driver, base + "/?window=1h", "overview", 860)
            _shoot(driver, base + "/failures?window=1h", "failures", 860)
            _shoot(driver, base + "/tasks/" + task[:8], "task", 980)
    finally:
        demo.terminate()
        demo.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
