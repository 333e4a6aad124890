"""A processor process for the distributed tests: ``python _worker_proc.py URL GROUP MEMBER OUT``.

Runs an :class:`AsyncEventProcessor` named GROUP as member MEMBER on the storage URL until
SIGTERM, then writes OUT (JSON): the event ids it handled, counts per event type, and, when
``omniq_observe.handlers.PrometheusHandler`` exists, the samples of its registry.

Every handled event id is also appended (and flushed) to ``OUT + ".log"`` at once, so a
test can see what a process handled before it was killed. With ``--hold FLAG``, the
handler blocks on events whose task id starts with ``hold`` until the file FLAG exists,
after writing ``OUT + ".holding"``.
"""

# ruff: noqa: ASYNC110, ASYNC230, ASYNC240 - a test worker: tiny local file I/O is its output,
# and polling a flag file is the point of --hold.
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from omniq_observe.backend import from_url
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.models.event import TaskEvent


def _prometheus(processor: AsyncEventProcessor) -> Any:
    try:
        from prometheus_client import CollectorRegistry

        from omniq_observe.handlers import PrometheusHandler  # type: ignore[attr-defined]
    except ImportError:
        return None
    registry = CollectorRegistry()
    processor.register_handler(PrometheusHandler(registry=registry, prefix="omniq"))
    return registry


def _samples(registry: Any) -> dict[str, float]:
    """Sum every sample by name, plus per-label-set samples keyed ``name{k=v,...}``."""
    found: dict[str, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
            found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


async def main(args: argparse.Namespace) -> None:
    storage = from_url(args.url)
    processor = AsyncEventProcessor(
        storage, args.group, member=args.member, batch_size=args.batch_size, idle_timeout=0.5
    )
    registry = _prometheus(processor)
    handled: list[str] = []
    types: Counter[str] = Counter()
    log = open(args.out + ".log", "a", buffering=1)  # noqa: SIM115 - open for the run
    hold_flag = Path(args.hold) if args.hold else None

    async def record(event: TaskEvent) -> None:
        if hold_flag is not None and event.task_id.startswith("hold"):
            Path(args.out + ".holding").touch()
            while not hold_flag.exists():
                await asyncio.sleep(0.01)
        handled.append(event.event_id)
        types[event.event_type] += 1
        log.write(event.event_id + "\n")

    processor.register_handler(record, name="record")
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(processor.stop()))
    Path(args.out + ".ready").touch()
    await processor.start()
    result = {
        "member": args.member,
        "handled": handled,
        "types": dict(types),
        "prometheus": _samples(registry) if registry is not None else None,
        "stats": {
            "processed": processor.stats.processed,
            "storage_errors": processor.stats.storage_errors,
        },
    }
    await storage.close()
    log.close()
    tmp = args.out + ".tmp"
    Path(tmp).write_text(json.dumps(result))
    os.replace(tmp, args.out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("group")
    parser.add_argument("member")
    parser.add_argument("out")
    parser.add_argument("--hold", default="")
    parser.add_argument("--batch-size", type=int, default=500)
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
