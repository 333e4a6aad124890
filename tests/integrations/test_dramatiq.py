"""Dramatiq: a real worker process (forked from the CLI) on Redis; producer in its own process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from _harness import (
    CANCEL_UNSTARTED,
    SCENARIOS,
    STORAGES,
    child_env,
    clear_redis_db,
    require_redis,
    run_scenarios,
    storage_url,
)

BROKER_DB = 12


@pytest.mark.parametrize("storage", STORAGES)
def test_dramatiq(tmp_path: Path, storage: str) -> None:
    require_redis()
    queue = f"omniq-it-dramatiq-{os.urandom(4).hex()}"
    with storage_url(storage, tmp_path, "dramatiq") as url:
        env = child_env(storage=url, broker=f"redis://127.0.0.1:6379/{BROKER_DB}", queue=queue)
        cmd = [sys.executable, "-m", "dramatiq", "it_dramatiq", "--processes", "1",
               "--threads", "2", "--queues", queue]
        try:
            scenarios = {**SCENARIOS, "cancel": CANCEL_UNSTARTED}  # skipped (AgeLimit)
            run_scenarios("dramatiq", url, cmd, env, tmp_path / "worker.log", scenarios)
        finally:
            clear_redis_db(BROKER_DB, f"{queue}-ns:*")
