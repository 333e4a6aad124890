"""RQ: a real forking worker (one work horse per job) on Redis; producer in its own process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _harness import STORAGES, require_redis, run_framework

BROKER = "redis://127.0.0.1:6379/11"


def rq_worker(queue: str) -> list[str]:
    return [str(Path(sys.executable).parent / "rq"), "worker", "-u", BROKER,
            "--worker-class", "it_rq.Worker", "--with-scheduler", "-q", queue]


@pytest.mark.parametrize("storage", STORAGES)
def test_rq(tmp_path: Path, storage: str) -> None:
    require_redis()
    run_framework(tmp_path, storage, "rq", BROKER, rq_worker)
