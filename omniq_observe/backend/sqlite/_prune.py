"""Pruning of :mod:`omniq_observe.backend.sqlite` in chunks.

One big ``DELETE`` holds SQLite's write lock for as long as it runs (about 10 s for 2.4M
rows), and every append of every process waits for it. So a prune deletes at most
``PRUNE_CHUNK`` rows per transaction, shrinks the chunk when one took longer than
``CHUNK_SECONDS``, and pauses between chunks.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = [
    "CHUNK_SECONDS",
    "PAUSE_SECONDS",
    "PRUNE_CHUNK",
    "keep_newest_from",
    "next_prune_chunk",
    "prune_in_chunks",
    "prune_older",
    "prune_through",
]

#: The most rows one prune transaction deletes.
PRUNE_CHUNK = 10_000
#: A chunk that took longer than this is halved (and one that took under a third of it
#: grows back), so that an append never waits much longer for the lock.
CHUNK_SECONDS = 0.015
_MIN_CHUNK = 500
#: The shortest pause between two chunks.
PAUSE_SECONDS = 0.03


def prune_older(conn: sqlite3.Connection, cutoff_us: int, limit: int) -> int:
    """Delete up to ``limit`` events with ``ts_us < cutoff_us`` (found by the time index)."""
    return conn.execute(
        "DELETE FROM omniq_events WHERE position IN ("
        "SELECT position FROM omniq_events WHERE ts_us < ? LIMIT ?)",
        (cutoff_us, limit),
    ).rowcount


def keep_newest_from(conn: sqlite3.Connection, keep: int) -> int | None:
    """The newest position to delete so that ``keep`` events remain (None: nothing to do)."""
    row = conn.execute(
        "SELECT position FROM omniq_events ORDER BY position DESC LIMIT 1 OFFSET ?", (keep,)
    ).fetchone()
    return None if row is None else int(row[0])


def prune_through(conn: sqlite3.Connection, last: int, limit: int) -> int:
    """Delete the oldest ``limit`` events at positions up to ``last``."""
    return conn.execute(
        "DELETE FROM omniq_events WHERE position IN ("
        "SELECT position FROM omniq_events WHERE position <= ? ORDER BY position LIMIT ?)",
        (last, limit),
    ).rowcount


def next_prune_chunk(size: int, took: float) -> int:
    """The next chunk's size, after a chunk of ``size`` rows took ``took`` seconds."""
    if took > CHUNK_SECONDS:
        return max(_MIN_CHUNK, size // 2)
    if took < CHUNK_SECONDS / 3:
        return min(PRUNE_CHUNK, size * 2)
    return size


Chunk = Callable[[sqlite3.Connection, int], int]


async def prune_in_chunks(
    write: Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]], chunk: Chunk
) -> int:
    """Run ``chunk(conn, size)`` in transactions of its own through ``write`` until it
    deletes fewer than ``size`` rows; return how many it deleted in all."""
    deleted, size = 0, PRUNE_CHUNK
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        count: int = await write(functools.partial(_run_chunk, chunk, size))
        took = loop.time() - started
        deleted += count
        if count < size:
            return deleted
        # Keep each transaction short (the write lock is held for its length), and leave
        # the lock free for longer than a waiting writer sleeps between its tries (SQLite's
        # busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 25 ms... as its wait goes on).
        size = next_prune_chunk(size, took)
        await asyncio.sleep(min(max(took, PAUSE_SECONDS), 0.1))


def _run_chunk(chunk: Chunk, size: int, conn: sqlite3.Connection) -> int:
    return chunk(conn, size)
