"""Processor groups of :mod:`omniq_observe.backend.sqlite`: task-routed partitions, leased.

Processors of one name (a group) split the log into ``PARTITIONS`` partitions by a hash of
``task_id`` (:func:`partition_of`), so every event of one task goes to the same member and
each member's pairing sees whole tasks.

* ``omniq_parts(grp, part, position, member, expires_us)``: per group and partition, the
  position up to which that partition was handled, and the member holding it until
  ``expires_us``.
* ``omniq_members(grp, member, expires_us)``: the group's live members; each renews its row
  at every claim, acknowledgement and renewal.

A member whose process (on this host) is gone counts as dead at once, so a killed processor's
partitions are taken over without waiting for its lease; a member on another host (a
file on a network share) is dead once its lease expired.

The live members, sorted by name, divide the partitions (partition ``p`` goes to member
number ``p % n``). A member takes a partition only when it is free (released, or its lease
expired: its member died), and gives up the partitions it should no longer hold at its
next claim, after it acknowledged its batch; so no two live members handle one event, and a
killed member's partitions are taken over once its lease expired. Every step runs in one
write transaction, so members of all processes take turns.

The group's position in ``omniq_positions`` is the lowest partition position; it only
ever moves forward.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from omniq_observe.backend._partitions import HOST as _HOST
from omniq_observe.backend._partitions import PARTITIONS, partition_of
from omniq_observe.backend._partitions import pid_gone as _pid_gone
from omniq_observe.backend.base import Consumer, StoredEvent
from omniq_observe.backend.sqlite._sql import select_after

__all__ = ["GROUP_SCHEMA", "PARTITIONS", "Groups", "partition_of", "set_group_position"]

GROUP_SCHEMA = """
CREATE TABLE IF NOT EXISTS omniq_parts (
    grp TEXT NOT NULL,
    part INTEGER NOT NULL,
    position INTEGER NOT NULL,
    member TEXT,
    expires_us INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grp, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS omniq_members (
    grp TEXT NOT NULL,
    member TEXT NOT NULL,
    expires_us INTEGER NOT NULL,
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (grp, member)
) WITHOUT ROWID;
"""
_NEVER = 2**63 - 1


@dataclass
class _Held:
    """What a member got at its last claim."""

    parts: tuple[int, ...]  # the partitions it holds
    through: int  # everything of them up to here is in the batch (or was handled)
    last: int | None  # the claimed batch's last position
    sole: bool  # it holds every partition at one position, alone in its group


class Groups:
    """Claims, acknowledgements and leases of every group, for one backend instance.

    Every method takes the writer's (or the reader's) connection inside its transaction.

    Args:
        lease_seconds: how long a member holds its partitions without renewing them.
    """

    def __init__(self, lease_seconds: float) -> None:
        self.lease_us = int(lease_seconds * 1_000_000)
        self._held: dict[Consumer, _Held] = {}

    @property
    def read_ahead(self) -> bool:
        """Whether every consumer of this instance reads the whole log alone."""
        return bool(self._held) and all(h.sole for h in self._held.values())

    # -- claiming ------------------------------------------------------------------------
    def claim(
        self, conn: sqlite3.Connection, consumer: Consumer, limit: int, now_us: int
    ) -> list[StoredEvent]:
        """Renew, release and take partitions, then read the next events of those held."""
        group = consumer.group
        _ensure_parts(conn, group)
        _reap_dead(conn, group)
        others = self._renew_member(conn, consumer, now_us)
        desired = _desired(conn, consumer, now_us)
        mine = self._rebalance(conn, consumer, desired, now_us)
        if not mine:
            self._held[consumer] = _Held((), -1, None, sole=False)
            return []
        row = conn.execute("SELECT max(position) FROM omniq_events").fetchone()
        newest = -1 if row[0] is None else int(row[0])
        low = min(mine.values())
        if len(mine) == PARTITIONS and low == max(mine.values()):
            batch = select_after(conn, low, limit)
        else:
            batch = select_after(conn, low, limit, _only(mine))
        through = int(batch[-1].position) if len(batch) >= limit else max(newest, low)
        parts = tuple(sorted(mine))
        sole = len(mine) == PARTITIONS and low == max(mine.values()) and not others
        self._held[consumer] = _Held(parts, through, _last(batch), sole)
        if not batch:  # nothing of ours up to ``through``: move past it now
            self._advance(conn, consumer, parts, through, now_us)
        return batch

    def ack(
        self,
        conn: sqlite3.Connection,
        consumer: Consumer,
        batch: Sequence[StoredEvent],
        now_us: int,
    ) -> None:
        """Move the held partitions past ``batch`` (and the group's position with them)."""
        held = self._held.get(consumer)
        if held is None or not batch:
            return
        last = int(batch[-1].position)
        # A batch read ahead (sole members only) was not claimed: it ends at its last event.
        through = held.through if held.last == last else last
        self._advance(conn, consumer, held.parts, through, now_us)
        if self._renew_member(conn, consumer, now_us):
            held.sole = False  # someone joined: claim again, to hand partitions over

    def renew(self, conn: sqlite3.Connection, consumer: Consumer, now_us: int) -> None:
        """Keep the member and its partitions its own for another lease."""
        self._renew_member(conn, consumer, now_us)
        conn.execute(
            "UPDATE omniq_parts SET expires_us = ? WHERE grp = ? AND member = ?",
            (now_us + self.lease_us, consumer.group, consumer.member),
        )

    def release(self, conn: sqlite3.Connection, consumer: Consumer) -> None:
        """Leave the group: free the member's partitions for the others at once."""
        self._held.pop(consumer, None)
        conn.execute(
            "UPDATE omniq_parts SET member = NULL, expires_us = 0 WHERE grp = ? AND member = ?",
            (consumer.group, consumer.member),
        )
        conn.execute(
            "DELETE FROM omniq_members WHERE grp = ? AND member = ?",
            (consumer.group, consumer.member),
        )

    def has_events_for(self, conn: sqlite3.Connection, consumer: Consumer, now_us: int) -> bool:
        """Whether a claim would do something: partitions to take or give up, or events."""
        rows = conn.execute(
            "SELECT part, position, member, expires_us FROM omniq_parts WHERE grp = ?",
            (consumer.group,),
        ).fetchall()
        if len(rows) < PARTITIONS:  # a new group: anything after its committed position?
            row = conn.execute(
                "SELECT 1 FROM omniq_events WHERE position > coalesce("
                "(SELECT position FROM omniq_positions WHERE grp = ?), -1) LIMIT 1",
                (consumer.group,),
            ).fetchone()
            return row is not None
        dead = _dead_members(conn, consumer.group)
        desired = _desired(conn, consumer, now_us, dead)
        mine: dict[int, int] = {}
        for part, position, member, expires_us in rows:
            if member == consumer.member:
                if part not in desired:
                    return True
                mine[part] = int(position)
            elif part in desired and (member is None or expires_us <= now_us or member in dead):
                return True
        if not mine:
            return False
        low = min(mine.values())
        where = "" if len(mine) == PARTITIONS and low == max(mine.values()) else _only(mine)
        sql = f"SELECT 1 FROM omniq_events WHERE position > ? {where} LIMIT 1"
        return conn.execute(sql, (low,)).fetchone() is not None

    # -- steps ---------------------------------------------------------------------------
    def _renew_member(self, conn: sqlite3.Connection, consumer: Consumer, now_us: int) -> int:
        """Renew the member's row; drop expired members; return how many others live."""
        group = consumer.group
        conn.execute(
            "INSERT INTO omniq_members (grp, member, expires_us, host, pid) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (grp, member) DO UPDATE SET "
            "expires_us = excluded.expires_us, host = excluded.host, pid = excluded.pid",
            (group, consumer.member, now_us + self.lease_us, _HOST, os.getpid()),
        )
        conn.execute("DELETE FROM omniq_members WHERE grp = ? AND expires_us <= ?", (group, now_us))
        row = conn.execute(
            "SELECT count(*) FROM omniq_members WHERE grp = ? AND member != ?",
            (group, consumer.member),
        ).fetchone()
        return int(row[0])

    def _rebalance(
        self, conn: sqlite3.Connection, consumer: Consumer, desired: set[int], now_us: int
    ) -> dict[int, int]:
        """Give up partitions not ``desired``, take desired free ones; return those held."""
        group, me = consumer.group, consumer.member
        mine: dict[int, int] = {}
        rows = conn.execute(
            "SELECT part, position, member, expires_us FROM omniq_parts WHERE grp = ?", (group,)
        ).fetchall()
        for part, position, member, expires_us in rows:
            if part not in desired:
                if member == me:
                    conn.execute(
                        "UPDATE omniq_parts SET member = NULL, expires_us = 0 "
                        "WHERE grp = ? AND part = ?",
                        (group, part),
                    )
            elif member == me or member is None or expires_us <= now_us:
                mine[part] = int(position)
        if mine:
            marks = ", ".join("?" * len(mine))
            conn.execute(
                f"UPDATE omniq_parts SET member = ?, expires_us = ? "
                f"WHERE grp = ? AND part IN ({marks})",
                (me, now_us + self.lease_us, group, *mine),
            )
        return mine

    def _advance(
        self,
        conn: sqlite3.Connection,
        consumer: Consumer,
        parts: tuple[int, ...],
        through: int,
        now_us: int,
    ) -> None:
        """Move the member's ``parts`` forward to ``through``; the group's position follows."""
        group = consumer.group
        if parts:
            marks = ", ".join("?" * len(parts))
            conn.execute(
                f"UPDATE omniq_parts SET position = max(position, ?), expires_us = ? "
                f"WHERE grp = ? AND member = ? AND part IN ({marks})",
                (through, now_us + self.lease_us, group, consumer.member, *parts),
            )
        conn.execute(
            "INSERT INTO omniq_positions (grp, position, updated_us) "
            "SELECT ?, min(position), ? FROM omniq_parts WHERE grp = ? AND true "
            "ON CONFLICT (grp) DO UPDATE SET position = max(position, excluded.position), "
            "updated_us = excluded.updated_us",
            (group, now_us, group),
        )


def set_group_position(conn: sqlite3.Connection, group: str, position: int, now_us: int) -> None:
    """Set the position of ``group`` and of each of its partitions (an explicit commit)."""
    conn.execute(
        "INSERT INTO omniq_positions (grp, position, updated_us) VALUES (?, ?, ?) "
        "ON CONFLICT (grp) DO UPDATE SET position = excluded.position, "
        "updated_us = excluded.updated_us",
        (group, position, now_us),
    )
    conn.execute("UPDATE omniq_parts SET position = ? WHERE grp = ?", (position, group))


def _ensure_parts(conn: sqlite3.Connection, group: str) -> None:
    """Create the group's partitions, starting at its committed position (if any)."""
    row = conn.execute("SELECT count(*) FROM omniq_parts WHERE grp = ?", (group,)).fetchone()
    if int(row[0]) >= PARTITIONS:
        return
    row = conn.execute("SELECT position FROM omniq_positions WHERE grp = ?", (group,)).fetchone()
    start = -1 if row is None else int(row[0])
    conn.executemany(
        "INSERT OR IGNORE INTO omniq_parts (grp, part, position) VALUES (?, ?, ?)",
        [(group, part, start) for part in range(PARTITIONS)],
    )


def _dead_members(conn: sqlite3.Connection, group: str) -> set[str]:
    """Members of ``group`` whose process on this host is gone."""
    rows = conn.execute(
        "SELECT member, pid FROM omniq_members WHERE grp = ? AND host = ?", (group, _HOST)
    ).fetchall()
    return {str(member) for member, pid in rows if _pid_gone(int(pid))}


def _reap_dead(conn: sqlite3.Connection, group: str) -> None:
    """Remove the members whose process is gone and free their partitions."""
    for member in _dead_members(conn, group):
        conn.execute(
            "UPDATE omniq_parts SET member = NULL, expires_us = 0 WHERE grp = ? AND member = ?",
            (group, member),
        )
        conn.execute("DELETE FROM omniq_members WHERE grp = ? AND member = ?", (group, member))


def _desired(
    conn: sqlite3.Connection, consumer: Consumer, now_us: int, dead: set[str] | None = None
) -> set[int]:
    """The partitions ``consumer`` should hold: ``p % n == its rank`` among live members."""
    rows = conn.execute(
        "SELECT member FROM omniq_members WHERE grp = ? AND expires_us > ?",
        (consumer.group, now_us),
    ).fetchall()
    members = sorted({str(m) for (m,) in rows} - (dead or set()) | {consumer.member})
    rank, count = members.index(consumer.member), len(members)
    return {part for part in range(PARTITIONS) if part % count == rank}


def _only(mine: dict[int, int]) -> str:
    """An SQL condition: events of the partitions in ``mine`` after each one's position."""
    cases = " ".join(f"WHEN {int(part)} THEN {int(pos)}" for part, pos in sorted(mine.items()))
    return f"AND position > CASE omniq_part(task_id) {cases} ELSE {_NEVER} END"


def _last(batch: list[StoredEvent]) -> int | None:
    return int(batch[-1].position) if batch else None
