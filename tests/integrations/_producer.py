"""The producer process of the integration tests: ``python _producer.py FRAMEWORK``.

Imports ``it_<framework>``, calls its ``produce(wait_started)`` inside a span of a real
TracerProvider, and prints one JSON line: the scripted tasks' ids and the span's trace id.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import time

from opentelemetry.sdk.trace import TracerProvider

from omniq_observe.backend import from_url


def wait_started(task_id: str, timeout: float = 30.0) -> None:
    """Poll storage until the task's STARTED is stored (a worker runs it)."""

    async def started() -> bool:
        storage = from_url(os.environ["OMNIQ_IT_STORAGE"])
        try:
            history = await storage.task_history(task_id)
        finally:
            await storage.close()
        return any(event.event_type == "STARTED" for event in history)

    deadline = time.monotonic() + timeout
    while not asyncio.run(started()):
        if time.monotonic() > deadline:
            raise SystemExit(f"task {task_id} never started")
        time.sleep(0.05)


def main() -> None:
    module = importlib.import_module(f"it_{sys.argv[1]}")
    tracer = TracerProvider().get_tracer("producer")
    with tracer.start_as_current_span("producer") as span:
        ids = module.produce(wait_started)
    trace_id = format(span.get_span_context().trace_id, "032x")
    print(json.dumps({"ids": ids, "trace_id": trace_id}))


if __name__ == "__main__":
    main()
