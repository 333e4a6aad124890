"""Schema, migrations and row encoding of :mod:`omniq_observe.backend.postgres`.

Every table lives in the backend's own schema. ``omniq_meta`` holds ``schema_version``;
:func:`migrate` brings a schema from whatever version it has to :data:`SCHEMA_VERSION`,
under an advisory lock so that processes starting together do not race.

Version 2 keeps each event's wire form as text (``body``), byte for byte, instead of
rebuilding it from ``jsonb`` columns (which turned ``1e20`` into an integer, ``-0.0`` into
``0`` and reordered keys), and makes ``event_id`` unique, so that an append retried after
its reply was lost stores nothing twice. Dead letters keep their event as text too (a
``jsonb`` value cannot hold ``\u0000``).

Version 3 routes processor groups by task: each event's ``part`` (the partition of its
``task_id``, computed at append), partitions leased to members (``omniq_parts``,
``omniq_members``) instead of leased batches (``omniq_leases``, dropped: a group resumes
at the start of its oldest lease).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from omniq_observe.backend._partitions import PARTITIONS, partition_of
from omniq_observe.backend.base import decode_stored
from omniq_observe.exceptions import ConfigurationError
from omniq_observe.models.event import TaskEvent, encode_event

__all__ = [
    "COPY_STAGE",
    "CREATE_STAGE",
    "SCHEMA_VERSION",
    "STAGE",
    "WIRE",
    "Step",
    "copy_payload",
    "lock_key",
    "migrate",
    "migrations",
    "valid_identifier",
]

SCHEMA_VERSION = 3

#: A migration step: a statement, or a function of the connection.
Step = str | Callable[[Any], Awaitable[None]]

# The event's versioned wire form, as it was written.
WIRE = "body"

# Version 1 rebuilt the wire form from its columns; migration 2 keeps that text once.
_V1_WIRE = (
    "coalesce(raw, json_build_object('v', 1, 'task_id', task_id, 'event_type', event_type, "
    "'timestamp', timestamp, 'details', details, 'event_id', event_id, "
    "'trace_context', trace_context)::text)"
)

# Each connection's staging table for appends (emptied at every commit).
STAGE = "pg_temp.omniq_stage"
CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} (n bigint GENERATED ALWAYS AS IDENTITY, "
    "event_id text, task_id text, event_type text, timestamp timestamptz, part smallint, "
    "body text) ON COMMIT DELETE ROWS"
)
COPY_STAGE = f"COPY {STAGE} (event_id, task_id, event_type, timestamp, part, body) FROM STDIN"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")


def valid_identifier(setting: str, value: Any) -> str:
    """Return ``value`` if it is a plain SQL identifier we can use unquoted.

    Raises:
        ConfigurationError: it is not.
    """
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        msg = (
            f"{setting} must be a plain identifier (letters, digits, underscore; at most "
            f"48 characters; not starting with a digit), got {value!r}"
        )
        raise ConfigurationError(msg, setting=setting, value=value)
    return value


def lock_key(schema: str, purpose: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``purpose`` in ``schema``."""
    key = zlib.crc32(f"omniq_observe:{purpose}".encode()) << 32 | zlib.crc32(schema.encode())
    return key - 2**64 if key >= 2**63 else key


def migrations(schema: str) -> dict[int, list[Step]]:
    """The steps that bring the schema to each version, keyed by that version."""
    return {1: _version_1(schema), 2: _version_2(schema), 3: _version_3(schema)}


def _version_1(s: str) -> list[Step]:
    """The first schema: events with their fields in columns, leased batches."""
    return [
        f"""CREATE TABLE {s}.omniq_events (
            id bigserial PRIMARY KEY,
            event_id text NOT NULL,
            task_id text NOT NULL,
            event_type text NOT NULL,
            timestamp timestamptz NOT NULL,
            details jsonb NOT NULL DEFAULT '{{}}',
            trace_context jsonb NOT NULL DEFAULT '{{}}',
            raw text
        )""",
        f"CREATE INDEX omniq_events_task ON {s}.omniq_events (task_id, id)",
        f"CREATE INDEX omniq_events_type ON {s}.omniq_events (event_type, id)",
        f"CREATE INDEX omniq_events_time ON {s}.omniq_events (timestamp)",
        f"""CREATE TABLE {s}.omniq_positions (
            grp text PRIMARY KEY,
            delivered bigint NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now()
        )""",
        f"""CREATE TABLE {s}.omniq_leases (
            grp text NOT NULL,
            after_id bigint NOT NULL,
            last_id bigint NOT NULL,
            member text NOT NULL,
            expires_at timestamptz NOT NULL,
            PRIMARY KEY (grp, after_id)
        )""",
        f"""CREATE TABLE {s}.omniq_dead_letters (
            id bigserial PRIMARY KEY,
            grp text NOT NULL,
            handler text NOT NULL,
            error text NOT NULL,
            attempts integer NOT NULL,
            position bigint NOT NULL,
            event jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
    ]


def _version_2(s: str) -> list[Step]:
    """The wire form kept as text, byte for byte; ``event_id`` unique."""
    return [
        f"ALTER TABLE {s}.omniq_events ADD COLUMN body text",
        f"UPDATE {s}.omniq_events SET body = {_V1_WIRE}",
        f"ALTER TABLE {s}.omniq_events ALTER COLUMN body SET NOT NULL",
        f"ALTER TABLE {s}.omniq_events DROP COLUMN details, DROP COLUMN trace_context, "
        "DROP COLUMN raw",
        # Copies a lost reply made before version 2: keep the first of each.
        f"DELETE FROM {s}.omniq_events a USING {s}.omniq_events b "
        "WHERE a.event_id = b.event_id AND a.id > b.id",
        f"CREATE UNIQUE INDEX omniq_events_event_id ON {s}.omniq_events (event_id)",
        f"ALTER TABLE {s}.omniq_dead_letters ALTER COLUMN event TYPE text "
        "USING event::text",
    ]


def _version_3(s: str) -> list[Step]:
    """Task partitions: each event's ``part``, partitions leased to members."""
    return [
        f"ALTER TABLE {s}.omniq_events ADD COLUMN part smallint",
        lambda conn: _fill_parts(conn, s),
        f"ALTER TABLE {s}.omniq_events ALTER COLUMN part SET NOT NULL",
        f"ALTER TABLE {s}.omniq_positions RENAME COLUMN delivered TO position",
        # A batch leased but not acknowledged is handled again: resume before it.
        f"UPDATE {s}.omniq_positions p SET position = l.after_id FROM (SELECT grp, "
        f"min(after_id) AS after_id FROM {s}.omniq_leases GROUP BY grp) l "
        "WHERE p.grp = l.grp",
        f"DROP TABLE {s}.omniq_leases",
        f"""CREATE TABLE {s}.omniq_parts (
            grp text NOT NULL,
            part smallint NOT NULL,
            position bigint NOT NULL,
            member text,
            expires_at timestamptz NOT NULL DEFAULT '-infinity',
            PRIMARY KEY (grp, part)
        )""",
        f"""CREATE TABLE {s}.omniq_members (
            grp text NOT NULL,
            member text NOT NULL,
            expires_at timestamptz NOT NULL,
            host text NOT NULL DEFAULT '',
            pid integer NOT NULL DEFAULT 0,
            PRIMARY KEY (grp, member)
        )""",
    ]


_FFFD = "\ufffd"


async def _fill_parts(conn: Any, schema: str) -> None:
    """Store the partition of every event's task (migration 3), a chunk of tasks at a time.

    The ``task_id`` column holds a NUL as U+FFFD (see :func:`copy_payload`): the tasks
    whose id has one are taken from the events' wire form.
    """
    events = f"{schema}.omniq_events"
    await conn.execute("CREATE TEMP TABLE omniq_part_of (task_id text, id bigint, "
                       "part smallint) ON COMMIT DROP")
    async with conn.cursor(name="omniq_tasks") as tasks:
        await tasks.execute(f"SELECT DISTINCT task_id FROM {events} "
                            "WHERE strpos(task_id, %s) = 0", (_FFFD,))
        while chunk := await tasks.fetchmany(10_000):
            await _copy_rows(conn, [(task, None, partition_of(task)) for (task,) in chunk])
    await conn.execute(f"UPDATE {events} e SET part = o.part FROM omniq_part_of o "
                       "WHERE o.task_id = e.task_id")
    cur = await conn.execute(f"SELECT id, {WIRE} FROM {events} WHERE strpos(task_id, %s) > 0",
                             (_FFFD,))
    rows = [(None, pos, partition_of(decode_stored(pos, body).event.task_id))
            for pos, body in await cur.fetchall()]
    await _copy_rows(conn, rows)
    await conn.execute(f"UPDATE {events} e SET part = o.part FROM omniq_part_of o "
                       "WHERE o.id = e.id")


async def _copy_rows(conn: Any, rows: Sequence[tuple[str | None, int | None, int]]) -> None:
    async with conn.cursor().copy("COPY omniq_part_of (task_id, id, part) FROM STDIN") as copy:
        for row in rows:
            await copy.write_row(row)


async def migrate(conn: Any, schema: str) -> int:
    """Create or upgrade ``schema`` on ``conn`` (autocommit); return the version."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema, "migrate"),))
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {schema}.omniq_meta "
            "(key text PRIMARY KEY, value text NOT NULL)"
        )
        cur = await conn.execute(
            f"SELECT value FROM {schema}.omniq_meta WHERE key = 'schema_version'"
        )
        row = await cur.fetchone()
        version = int(row[0]) if row else 0
        for target, statements in sorted(migrations(schema).items()):
            if target <= version:
                continue
            for step in statements:
                await (conn.execute(step) if isinstance(step, str) else step(conn))
            version = target
        await conn.execute(
            f"INSERT INTO {schema}.omniq_meta (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(version),),
        )
    return version


_PART_TEXT = [str(part) for part in range(PARTITIONS)]
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_NUL = "\x00"


def copy_payload(events: Sequence[TaskEvent]) -> bytes:
    """Encode events as COPY text rows: event_id, task_id, event_type, timestamp, the
    partition of the task, body.

    ``body`` is the wire form; JSON escapes NUL there, but the ``text`` columns of the
    indexed fields cannot hold it, so a NUL in them is stored as U+FFFD (readers decode
    ``body``, which keeps the real value).
    """
    lines = []
    for e in events:
        fields = [e.event_id, e.task_id, e.event_type, e.timestamp.isoformat(),
                  _PART_TEXT[partition_of(e.task_id)], encode_event(e).decode()]
        if _NUL in e.task_id or _NUL in e.event_id or _NUL in e.event_type:
            fields[:3] = [f.replace(_NUL, "\ufffd") for f in fields[:3]]
        line = "\t".join(fields)
        # Most rows need no escaping: four scans in C find out, instead of five translations.
        if line.count("\t") != 5 or "\\" in line or "\n" in line or "\r" in line:
            line = "\t".join([f.translate(_ESCAPES) for f in fields])
        lines.append(line)
    lines.append("")
    return "\n".join(lines).encode()
