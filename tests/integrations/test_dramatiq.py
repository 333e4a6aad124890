"""Dramatiq: a real worker process (forked by its CLI) on Redis; producer in its own process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _harness import CANCEL_UNSTARTED, SCENARIOS, STORAGES, require_redis, run_framework


def dramatiq_worker(queue: str) -> list[str]:
    return [sys.executable, "-m", "dramatiq", "it_dramatiq", "--processes", "1",
            "--threads", "2", "--queues", queue]


@pytest.mark.parametrize("storage", STORAGES)
def test_dramatiq(tmp_path: Path, storage: str) -> None:
    require_redis()
    scenarios = {**SCENARIOS, "cancel": CANCEL_UNSTARTED}  # skipped by AgeLimit
    run_framework(tmp_path, storage, "dramatiq", "redis://127.0.0.1:6379/12",
                  dramatiq_worker, scenarios)
