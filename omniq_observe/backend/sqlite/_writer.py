"""The group-commit writer of :mod:`omniq_observe.backend.sqlite`.

Writes from coroutines (of any event loop) and from threads queue up for one writer
thread, which takes everything waiting (up to ``max_batch`` events), runs it in one
transaction and then resumes each caller, with one hop per event loop.

The WAL is bounded by size, not by commits: a second thread copies the WAL back into the
database file (a PASSIVE checkpoint, which never blocks a commit) each time it grew by
``PASSIVE_EVERY`` bytes. PASSIVE checkpoints alone cannot bound the file while writes go
on, because the WAL only starts over once every frame was copied. So when the WAL reaches
``TRUNCATE_AT`` bytes the writer takes a turn itself: between two transactions it runs a
TRUNCATE checkpoint (nothing of ours writes meanwhile, so it can finish; other writers wait
for it), which empties the file. ``journal_size_limit`` caps what a reset WAL keeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omniq_observe.exceptions import BackendUnavailableError, StorageError
from omniq_observe.models.event import TaskEvent

__all__ = [
    "PASSIVE_EVERY",
    "TRUNCATE_AT",
    "GroupWriter",
    "Transaction",
    "WriteFn",
    "WriteItem",
    "write_error",
]

WriteFn = Callable[[sqlite3.Connection], Any]
_STOP = object()
#: The writer asks for a PASSIVE checkpoint each time the WAL grew by this many bytes.
PASSIVE_EVERY = 4 * 1024 * 1024
#: At this WAL size the writer runs a TRUNCATE checkpoint between two transactions.
TRUNCATE_AT = 32 * 1024 * 1024
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
        self._wal_path = f"{path}-wal"
        self._checkpoint_lock = threading.Lock()  # one checkpoint of ours at a time
        self._passive_mark = 0  # the WAL size at the last PASSIVE checkpoint request

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
                self._bound_wal(conn)
                if stop:
                    return
        finally:
            conn.close()

    def _bound_wal(self, conn: sqlite3.Connection) -> None:
        """After a commit: ask for a PASSIVE checkpoint, or run a TRUNCATE one, by WAL size."""
        try:
            size = os.stat(self._wal_path).st_size
        except OSError:
            return
        if size >= TRUNCATE_AT:
            # Our turn: no transaction of ours is open, so the checkpoint can copy every
            # frame and start the WAL over. A reader or writer of another process that
            # holds it up past busy_timeout leaves it for the next commit.
            # (A checkpoint already running returns "busy" at once: wait for our own
            # checkpointer's PASSIVE one to end first.)
            with self._checkpoint_lock, contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            self._passive_mark = 0
        elif size >= self._passive_mark + PASSIVE_EVERY:
            self._passive_mark = size
            self._checkpoint_due.set()
        elif size < self._passive_mark:  # the WAL started over
            self._passive_mark = 0

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
                    with self._checkpoint_lock:
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
            _wake(items, [None], write_error(exc))
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


# SQLite's primary result codes of failures that pass: SQLITE_BUSY, SQLITE_LOCKED (another
# connection holds the lock) and SQLITE_FULL (no space left: a retry after space was freed
# succeeds, so a logger's retry buffer keeps such events).
_TRANSIENT = {5, 6, 13}


def write_error(exc: BaseException) -> StorageError:
    """The error a failed write raises: ``BackendUnavailableError`` when it may pass."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    text = str(exc)
    transient = isinstance(exc, sqlite3.OperationalError) and (
        (isinstance(code, int) and code & 0xFF in _TRANSIENT)
        or "database is locked" in text
        or "disk is full" in text
    )
    kind = BackendUnavailableError if transient else StorageError
    error = kind(f"SQLite write failed: {exc}")
    error.__cause__ = exc
    return error


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
