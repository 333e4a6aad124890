"""The schema and the hot-path statements of :mod:`omniq_observe.backend.sqlite`.

Group commits insert their rows with a few multi-row statements; the log is read in
pages that SQLite joins into one JSON array, decoded by msgspec in one call.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec

from omniq_observe.backend._partitions import partition_of
from omniq_observe.backend.base import StoredEvent, decode_stored, epoch_us
from omniq_observe.exceptions import InvalidEventError
from omniq_observe.models.event import TaskEvent, decode_wire, encode_event

__all__ = [
    "JOURNAL_SIZE_LIMIT",
    "SCHEMA",
    "committed_position",
    "connect",
    "health_probe",
    "insert_events",
    "prepare",
    "query_rows",
    "quick_check",
    "select_after",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS omniq_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS omniq_events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS omniq_events_task ON omniq_events (task_id);
CREATE INDEX IF NOT EXISTS omniq_events_ts ON omniq_events (ts_us);
CREATE TABLE IF NOT EXISTS omniq_positions (
    grp TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    updated_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS omniq_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    handler TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    position INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""
# A group commit inserts its rows with multi-row INSERT statements of these sizes: one
# statement (and one release of Python's GIL) per up to 256 rows, and few distinct
# statements for sqlite3's statement cache.
_CHUNKS = (256, 64, 16, 4, 1)
_INSERTS = {
    n: "INSERT INTO omniq_events (event_id, task_id, event_type, ts_us, body) VALUES "
    + ", ".join(["(?, ?, ?, ?, ?)"] * n)
    for n in _CHUNKS
}
# One page of the log in one statement: SQLite joins the rows into one JSON array of
# ``[position, body]`` pairs without the GIL, and msgspec decodes it into StoredEvents in
# one call. The positions come once more on their own, to check the order.
_SELECT_AFTER = (
    "SELECT json_group_array(position), "
    "'[' || group_concat('[' || position || ',' || body || ']', ',') || ']' FROM ("
    "SELECT position, body FROM omniq_events WHERE position > ? {where} "
    "ORDER BY position LIMIT ?)"
)
_positions_decoder = msgspec.json.Decoder(list[int])
_page_decoder = msgspec.json.Decoder(list[StoredEvent])
_READ_PAGE = 1000
#: ``PRAGMA journal_size_limit``: a WAL that was reset is truncated back to this size.
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024


def connect(path: Path, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    """Open ``path`` with the backend's pragmas and functions; close it if that fails."""
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        _use_wal(conn, busy_timeout)
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        conn.create_function("omniq_part", 1, partition_of, deterministic=True)
    except BaseException:
        conn.close()
        raise
    return conn


def _use_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch the file to WAL, waiting up to ``busy_timeout`` for other connections.

    Another connection opening a new file at the same moment (two processes starting
    together) makes the switch fail with "database is locked" at once: SQLite calls no
    busy handler for it. So it is tried again, backing off, until ``busy_timeout``.
    """
    deadline = time.monotonic() + busy_timeout
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)  # a backoff between tries, not a synchronisation
        pause = min(pause * 2, 0.05)


def prepare(conn: sqlite3.Connection, more_schema: str, version: int) -> None:
    """Create what is missing of the schema; record ``version`` unless it is older."""
    conn.executescript(SCHEMA + more_schema)
    # Checkpoints are run by GroupWriter (by WAL size), not at commits.
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(
        "INSERT INTO omniq_meta (key, value) VALUES ('schema_version', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value "
        "WHERE CAST(value AS INTEGER) < CAST(excluded.value AS INTEGER)",
        (str(version),),
    )


def insert_events(conn: sqlite3.Connection, events: list[TaskEvent]) -> None:
    """Insert ``events`` in order with as few multi-row statements as the sizes allow."""
    done, total = 0, len(events)
    for size in _CHUNKS:
        sql = _INSERTS[size]
        while total - done >= size:
            params: list[Any] = []
            add = params.extend
            for e in events[done : done + size]:
                add((e.event_id, e.task_id, e.event_type, epoch_us(e.timestamp), encode_event(e)))
            conn.execute(sql, params)
            done += size


def committed_position(conn: sqlite3.Connection, group: str) -> int:
    """The position ``group`` committed, or -1 before its first commit."""
    row = conn.execute("SELECT position FROM omniq_positions WHERE grp = ?", (group,)).fetchone()
    return -1 if row is None else int(row[0])


def select_after(
    conn: sqlite3.Connection, after: int, limit: int, where: str = ""
) -> list[StoredEvent]:
    """Read up to ``limit`` events after ``after`` in pages of ``_READ_PAGE``.

    ``where``: an extra SQL condition (``AND ...``) on the events, from trusted code.

    Each page is decoded in one call that holds the GIL; pages keep those calls short,
    so the event loop's thread never waits long for it.
    """
    found: list[StoredEvent] = []
    while limit > 0:
        page = _select_page(conn, after, min(limit, _READ_PAGE), where)
        found.extend(page)
        if len(page) < min(limit, _READ_PAGE):
            break
        after = int(page[-1].position)
        limit -= len(page)
    return found


def _select_page(
    conn: sqlite3.Connection, after: int, limit: int, where: str
) -> list[StoredEvent]:
    sql = _SELECT_AFTER.format(where=where)
    positions_json, rows = conn.execute(sql, (after, limit)).fetchone()
    if rows is None:
        return []
    try:
        page = decode_wire(_page_decoder, rows)
    except InvalidEventError:  # a row does not decode: the others still must
        return _select_rows(conn, after, limit, where)
    positions = _positions_decoder.decode(positions_json)
    if positions != sorted(positions):  # pragma: no cover - SQLite keeps the subquery order
        page.sort(key=_position_of)
    return page


def _select_rows(
    conn: sqlite3.Connection, after: int, limit: int, where: str
) -> list[StoredEvent]:
    """The page of :func:`_select_page` decoded row by row: a row that does not decode
    comes back as an ``UndecodableEvent`` in its place."""
    rows = conn.execute(
        f"SELECT position, body FROM omniq_events WHERE position > ? {where} "
        "ORDER BY position LIMIT ?",
        (after, limit),
    ).fetchall()
    return [decode_stored(int(position), body) for position, body in rows]


def _position_of(stored: StoredEvent) -> int:
    return int(stored.position)


# What ``health`` reads: the schema version, and the first and last entry of the events
# table and of each of its indexes (a few pages each, however long the log).
_PROBES = (
    "SELECT position, body FROM omniq_events ORDER BY position LIMIT 1",
    "SELECT position, body FROM omniq_events ORDER BY position DESC LIMIT 1",
    "SELECT min(ts_us), max(ts_us) FROM omniq_events",
    "SELECT task_id FROM omniq_events INDEXED BY omniq_events_task ORDER BY task_id LIMIT 1",
    "SELECT task_id FROM omniq_events INDEXED BY omniq_events_task "
    "ORDER BY task_id DESC LIMIT 1",
    "SELECT count(*) FROM omniq_positions",
)


def health_probe(conn: sqlite3.Connection) -> int | None:
    """Read a few real pages (raising ``sqlite3.Error`` on damage); return the schema version."""
    row = conn.execute("SELECT value FROM omniq_meta WHERE key = 'schema_version'").fetchone()
    for sql in _PROBES:
        conn.execute(sql).fetchall()
    return None if row is None else int(row[0])


def quick_check(conn: sqlite3.Connection) -> list[str]:
    """``PRAGMA quick_check``: the problems it reports, ``[]`` when the file is sound."""
    rows = conn.execute("PRAGMA quick_check").fetchall()
    found = [line for (text,) in rows for line in str(text).splitlines() if line.strip()]
    return [] if found == ["ok"] else found


# ``query`` with a time window starts at the first position inside it. Finding that
# position by scanning the log from the start costs the whole history before the window;
# instead, at most this many rows are scanned from the start, and when none of them is in
# the window the position comes from the time index (which costs the window, not history).
_PROBE_ROWS = 4096
_FIRST_BY_POSITION = (
    "SELECT min(position) FROM (SELECT position, ts_us FROM omniq_events "
    "WHERE position > ? ORDER BY position LIMIT ?) WHERE ts_us >= ? AND ts_us < ?"
)
_FIRST_BY_TIME = (
    "SELECT min(position) FROM omniq_events INDEXED BY omniq_events_ts "
    "WHERE ts_us >= ? AND ts_us < ?"
)
_NO_END = 2**63 - 1


def first_in_window(conn: sqlite3.Connection, since_us: int, until_us: int | None) -> int | None:
    """The smallest position of an event with ``since_us <= ts_us < until_us`` (or None)."""
    end = _NO_END if until_us is None else until_us
    found = conn.execute(_FIRST_BY_POSITION, (-1, _PROBE_ROWS, since_us, end)).fetchone()[0]
    if found is None:
        found = conn.execute(_FIRST_BY_TIME, (since_us, end)).fetchone()[0]
    return None if found is None else int(found)


def query_rows(
    conn: sqlite3.Connection,
    types: list[str] | None,
    window: tuple[int | None, int | None],
    after: int | None,
    limit: int,
) -> list[tuple[int, bytes]]:
    """``(position, body)`` of up to ``limit`` events after ``after`` that pass the filters.

    ``window`` is ``(since_us, until_us)``. A first page (``after`` None) with ``since``
    starts at :func:`first_in_window`; later pages start at their cursor.
    """
    since_us, until_us = window
    start = -1 if after is None else after
    if after is None and since_us is not None:
        first = first_in_window(conn, since_us, until_us)
        if first is None:
            return []
        start = first - 1
    clauses = ["position > ?"]
    args: list[Any] = [start]
    if types:
        clauses.append(f"event_type IN ({', '.join('?' * len(types))})")
        args.extend(types)
    if since_us is not None:
        clauses.append("ts_us >= ?")
        args.append(since_us)
    if until_us is not None:
        clauses.append("ts_us < ?")
        args.append(until_us)
    sql = (
        f"SELECT position, body FROM omniq_events WHERE {' AND '.join(clauses)} "
        "ORDER BY position LIMIT ?"
    )
    rows: list[tuple[int, bytes]] = conn.execute(sql, (*args, limit)).fetchall()
    return rows
