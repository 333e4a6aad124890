"""The group-commit writer of :mod:`omniq_observe.backend.sqlite`.

Writes from coroutines (of any event loop) and from threads queue up for one writer
thread, which takes everything waiting (up to ``max_batch`` events), runs it in one
transaction and then resumes each caller, with one hop per event loop. A second thread
copies the WAL back into the database file (a checkpoint) every few hundred commits, so
that a commit never waits for one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omniq_observe.exceptions import BackendUnavailableError, StorageError
from omniq_observe.models.event import TaskEvent

__all__ = ["GroupWriter", "Transaction", "WriteFn", "WriteItem"]

WriteFn = Callable[[sqlite3.Connection], Any]
_STOP = object()
# The writer asks for a checkpoint after this many commits (each writes a few WAL pages;
# SQLite's own default is a checkpoint per 1000 pages).
_CHECKPOINT_EVERY = 250
# Appends of one loop turn are sent to the writer as soon as this many are waiting, so
# that the writer commits them while the loop prepares the rest (a two-stage pipeline).
_PIPELINE_ROWS = 32


class WriteItem:
    """One queued write: a function to run or rows to insert, and the callers to resume."""

    __slots__ = ("fn", "futures", "loop", "rows")

    def __init__(
        self,
        fn: WriteFn | None,
        rows: list[TaskEvent],
        loop: asyncio.AbstractEventLoop | None,
        futures: list[Any],
    ) -> None:
        self.fn = fn
        self.rows = rows
        self.loop = loop
        self.futures = futures


# Runs a group of writes in one transaction; returns one result per write, or raises.
Transaction = Callable[[sqlite3.Connection, list[WriteItem]], list[Any]]


class GroupWriter:
    """The write side of one SQLite file: a queue, a writer thread and a checkpointer.

    Args:
        path: the database file (named in errors).
        max_batch: the most events one transaction takes.
        connect: opens a connection (the checkpointer's own).
        transaction: runs a group of writes in one transaction.
    """

    def __init__(
        self,
        path: Path,
        max_batch: int,
        connect: Callable[[], sqlite3.Connection],
        transaction: Transaction,
    ) -> None:
        self.path = path
        self.max_batch = max_batch
        self.closed = False
        self._connect = connect
        self._transaction = transaction
        self._writes: queue.SimpleQueue[WriteItem | object] = queue.SimpleQueue()
        # Appends made during one turn of an event loop, written as one queue item.
        self._pending: dict[asyncio.AbstractEventLoop, WriteItem] = {}
        self._writer: threading.Thread | None = None
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_due = threading.Event()

    @property
    def started(self) -> bool:
        """Whether :meth:`start` has run."""
        return self._writer is not None

    def start(self, conn: sqlite3.Connection) -> None:
        """Start the writer thread, which owns ``conn`` from now on, and the checkpointer."""
        writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="omniq-sqlite-write", daemon=True
        )
        checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="omniq-sqlite-checkpoint", daemon=True
        )
        writer.start()
        checkpointer.start()
        self._writer, self._checkpointer = writer, checkpointer

    # -- the threads ---------------------------------------------------------------------
    def _write_loop(self, conn: sqlite3.Connection) -> None:
        """Take every write waiting, run them in one transaction, then wake their callers."""
        get, get_nowait = self._writes.get, self._writes.get_nowait
        commits = 0
        try:
            while True:
                item = get()
                if not isinstance(item, WriteItem):
                    return
                items = [item]
                size = len(item.rows) or 1
                stop = False
                while size < self.max_batch:
                    try:
                        nxt = get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(nxt, WriteItem):
                        stop = True
                        break
                    items.append(nxt)
                    size += len(nxt.rows) or 1
                self._commit_group(conn, items)
                commits += 1
                if commits % _CHECKPOINT_EVERY == 0:
                    self._checkpoint_due.set()
                if stop:
                    return
        finally:
            conn.close()

    def _checkpoint_loop(self) -> None:
        """Copy the WAL back into the database file whenever the writer says it is due.

        PASSIVE checkpoints never block the writer or readers, in this process or others.
        """
        conn: sqlite3.Connection | None = None
        due = self._checkpoint_due
        try:
            while True:
                due.wait()
                due.clear()
                if self.closed:
                    return
                try:
                    if conn is None:
                        conn = self._connect()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error:  # pragma: no cover - retried at the next due time
                    pass
        finally:
            if conn is not None:
                conn.close()

    def _commit_group(self, conn: sqlite3.Connection, items: list[WriteItem]) -> None:
        """Run every write in one transaction and resume the callers. If the transaction
        fails, retry each write alone, so one bad write fails only its own callers."""
        try:
            results = self._transaction(conn, items)
        except Exception as exc:
            if len(items) > 1:
                for item in items:
                    self._commit_group(conn, [item])
                return
            error = _write_error(exc)
            _wake(items, [None], error)
            return
        _wake(items, results, None)

    # -- queueing writes -----------------------------------------------------------------
    async def write(self, fn: WriteFn) -> Any:
        """Run ``fn(conn)`` in the next group-commit transaction; return its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._writes.put(WriteItem(fn, [], loop, [future]))
        return await future

    def write_blocking(self, fn: WriteFn | None, rows: Sequence[TaskEvent] = ()) -> Any:
        """Run ``fn(conn)`` (or store ``rows``) in the next transaction, from sync code."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._writes.put(WriteItem(fn, list(rows or ()), None, [future]))
        return future.result()

    def enqueue(self, events: Sequence[TaskEvent]) -> asyncio.Future[Any]:
        """Queue ``events`` with the other appends of this loop turn.

        Returns:
            A future of the running loop, done when their transaction has committed.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        item = self._pending.get(loop)
        if item is None:
            item = self._pending[loop] = WriteItem(None, [], loop, [])
            loop.call_soon(self._flush, loop, item)
        item.rows.extend(events)
        item.futures.append(future)
        if len(item.rows) >= _PIPELINE_ROWS:
            self._flush(loop, item)
        return future

    def _flush(self, loop: asyncio.AbstractEventLoop, item: WriteItem) -> None:
        if self._pending.get(loop) is not item:
            return  # already sent
        del self._pending[loop]
        if self.closed:
            _wake([item], [None], StorageError(f"SQLiteBackend({str(self.path)!r}) is closed"))
        else:
            self._writes.put(item)

    # -- closing -------------------------------------------------------------------------
    def close(self) -> bool:
        """Refuse new writes and ask both threads to finish; return whether they run.

        When they do, :meth:`join` them, then :meth:`fail_leftovers`.
        """
        self.closed = True
        self._checkpoint_due.set()
        if self._writer is None:
            return False
        self._writes.put(_STOP)
        return True

    def join(self) -> None:
        """Wait for both threads to finish."""
        for thread in (self._writer, self._checkpointer):
            if thread is not None:
                thread.join()

    def fail_leftovers(self) -> None:
        """Fail the writes still queued after the writer stopped, so no caller waits forever."""
        error = StorageError(f"SQLiteBackend({str(self.path)!r}) is closed")
        while True:
            try:
                item = self._writes.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, WriteItem):
                _wake([item], [None], error)


def _wake(items: list[WriteItem], results: list[Any], error: BaseException | None) -> None:
    """Resume every caller: one hop per event loop, then a plain result per future."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
    for item, result in zip(items, results, strict=True):
        if item.loop is None:
            for future in item.futures:
                _settle(future, result, error)
        else:
            by_loop.setdefault(item.loop, []).extend((f, result) for f in item.futures)
    for loop, pending in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
            loop.call_soon_threadsafe(_resolve, pending, error)


def _resolve(pending: list[tuple[asyncio.Future[Any], Any]], error: BaseException | None) -> None:
    for future, result in pending:
        if not future.done():
            _settle(future, result, error)


def _settle(future: Any, result: Any, error: BaseException | None) -> None:
    """Give a caller's future its result, or ``error`` when its write failed."""
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


# Busy, locked, full, I/O error: SQLite may well succeed when the write is tried again.
_TRANSIENT_CODES = frozenset({5, 6, 10, 13})  # SQLITE_BUSY, _LOCKED, _IOERR, _FULL
_TRANSIENT_WORDS = ("locked", "busy", "is full", "disk i/o")


def _write_error(exc: Exception) -> StorageError:
    """``exc`` as the error a writer's callers get: transient failures (the database is
    locked, busy or full) as :class:`BackendUnavailableError`, others as StorageError."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    transient = isinstance(exc, sqlite3.OperationalError) and (
        (code is not None and code & 0xFF in _TRANSIENT_CODES)
        or (code is None and any(w in str(exc).lower() for w in _TRANSIENT_WORDS))
    )
    kind = BackendUnavailableError if transient else StorageError
    error = kind(f"SQLite write failed: {exc}")
    error.__cause__ = exc
    return error
