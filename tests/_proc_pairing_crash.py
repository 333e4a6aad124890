"""Subprocess for tests/test_pairing_restart.py: a processor with a PrometheusHandler.

Usage: python _proc_pairing_crash.py URL PREFIX MODE

URL is a SQLite file path, a Redis URL (PREFIX: the key prefix) or a PostgreSQL DSN
(PREFIX: the schema). MODE ``serve``: serve the registry over HTTP (prints ``port N``) and
process events until killed; MODE ``once``: ``process_events_once``, then print the
registry in the text exposition format.
"""

from __future__ import annotations

import asyncio
import sys

from prometheus_client import CollectorRegistry, generate_latest, start_http_server

from omniq_observe.backend import BaseEventStorage, PostgresBackend, RedisBackend, SQLiteBackend
from omniq_observe.events import AsyncEventProcessor
from omniq_observe.handlers import PrometheusHandler


def open_storage(url: str, prefix: str) -> BaseEventStorage:
    if url.startswith("redis"):
        return RedisBackend(url, prefix=prefix)
    if url.startswith("postgres"):
        return PostgresBackend(url, schema=prefix)
    return SQLiteBackend(url)


async def main(url: str, prefix: str, mode: str) -> None:
    registry = CollectorRegistry()
    async with open_storage(url, prefix) as storage:
        processor = AsyncEventProcessor(storage, "crash", batch_size=25, idle_timeout=0.05)
        processor.register_handler(PrometheusHandler(registry=registry))
        if mode == "serve":
            server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
            print(f"port {server.server_port}", flush=True)
            await processor.start()
        else:
            await processor.process_events_once()
            print(generate_latest(registry).decode(), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
