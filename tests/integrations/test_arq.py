"""arq: a real worker process on Redis; producer in its own process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _harness import SCENARIOS, STORAGES, require_redis, run_framework

# arq's Retry is raised by the function itself: there is no FAILED before RETRIED
RETRY_ARQ = ["ENQUEUED", "STARTED", "RETRIED", "STARTED", "COMPLETED"]


def arq_worker(queue: str) -> list[str]:
    return [str(Path(sys.executable).parent / "arq"), "it_arq.WorkerSettings"]


@pytest.mark.parametrize("storage", STORAGES)
def test_arq(tmp_path: Path, storage: str) -> None:
    require_redis()
    run_framework(tmp_path, storage, "arq", "redis://127.0.0.1:6379/13", arq_worker,
                  {**SCENARIOS, "retry": RETRY_ARQ})
