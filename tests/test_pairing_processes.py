"""A producer process and two worker processes, each with its own batching logger, write
one workload with retries into SQLite and into Redis; a processor reading it afterwards
gives the reference numbers."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from _server_backends import make_redis
from _workloads import pairing_samples, reference, workload
from prometheus_client import CollectorRegistry

from omniq_observe.backend import BaseEventStorage, SQLiteBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.handlers import PrometheusHandler

HERE = Path(__file__).resolve().parent
SEED, TASKS = 21, 200


def _write(url: str, prefix: str) -> None:
    """Run the three roles at once; wait for all of them."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "_proc_pairing_role.py"), url, prefix, role, str(SEED),
             str(TASKS)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE,
        )
        for role in ("producer", "odd", "even")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "done", err


async def _numbers(storage: BaseEventStorage) -> Any:
    registry = CollectorRegistry()
    processor = AsyncEventProcessor(storage, "pairs", batch_size=100)
    processor.register_handler(PrometheusHandler(registry=registry))
    await processor.process_events_once()
    return pairing_samples(registry)


def test_three_processes_into_one_sqlite_file(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    _write(path, "")

    async def check() -> Any:
        async with SQLiteBackend(path) as storage:
            return await _numbers(storage)

    assert asyncio.run(check()) == reference(workload(random.Random(SEED), TASKS))


def test_three_processes_into_redis(tmp_path: Path) -> None:
    storage = make_redis(tmp_path)

    async def check() -> Any:
        async with storage:
            _write(storage.url, storage.prefix)
            return await _numbers(storage)

    assert asyncio.run(check()) == reference(workload(random.Random(SEED), TASKS))

