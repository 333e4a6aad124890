"""taskiq: a real worker process on Redis (taskiq-redis); producer in its own process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _harness import SCENARIOS, STORAGES, require_redis, run_framework


def taskiq_worker(queue: str) -> list[str]:
    return [str(Path(sys.executable).parent / "taskiq"), "worker", "it_taskiq:broker",
            "--workers", "1", "--no-configure-logging"]


@pytest.mark.parametrize("storage", STORAGES)
def test_taskiq(tmp_path: Path, storage: str) -> None:
    require_redis()
    scenarios = {name: SCENARIOS[name] for name in ("ok", "fail", "retry", "timeout")}
    run_framework(tmp_path, storage, "taskiq", "redis://127.0.0.1:6379/14", taskiq_worker,
                  scenarios, retry_eta=False)  # no cancel; SimpleRetryMiddleware: no delay
