"""Processor groups of :mod:`omniq_observe.backend.postgres`: task-routed partitions, leased.

Processors of one name (a group) split the log into ``PARTITIONS`` partitions by a hash of
``task_id`` (:func:`~omniq_observe.backend._partitions.partition_of`, stored in each
event's ``part`` column at append), so every event of one task goes to the same member and
each member's pairing sees whole tasks.

* ``omniq_parts(grp, part, position, member, expires_at)``: per group and partition, the
  position up to which that partition was handled, and the member holding it until
  ``expires_at``.
* ``omniq_members(grp, member, expires_at, host, pid)``: the group's live members and their
  processes; each renews its row at every renewal, and at a claim or acknowledgement once
  a third of its lease passed.
* ``omniq_positions(grp, position)``: the group's committed position before its first
  claim (an explicit ``commit_position``); after it, the group's position is the lowest
  partition position, which only ever moves forward.

The live members, sorted by name, divide the partitions (partition ``p`` goes to member
number ``p % n``). A member takes a partition only when it is free (released, or its lease
expired: its member died), and gives up the partitions it should no longer hold at its
next claim, after it acknowledged its batch; so no two live members handle one event, and
a killed member's partitions are taken over once its lease expired. A member whose process
on this host is gone is dead at once for the members of this host: a member that joins (a
restarted processor) frees its partitions before it claims, and the others at their next
claim or check for events. Claims of one group
run one at a time (a transaction-level advisory lock); acknowledgements touch only the
member's own rows.

A claim is one round trip (a pipeline): the rebalance in a short locked transaction, then
the newest id and the batch, read outside the lock. When nothing changes hands and no
renewal is due, the claim writes nothing.

Every function takes an open autocommit connection; the caller retries and translates
errors.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from omniq_observe.backend._partitions import HOST, PARTITIONS, pid_gone
from omniq_observe.backend.base import Consumer, StoredEvent, decode_stored
from omniq_observe.backend.postgres._schema import WIRE, lock_key

__all__ = ["Groups", "stored_rows"]

_ALL_PARTS = list(range(PARTITIONS))

# The live members ranked by name, the claiming member always among them: ``me`` is its
# rank and the number of members. Partition ``p`` is wanted by the member ``p % n``.
_MEMBERS = """WITH live AS (
    SELECT member FROM {s}.omniq_members WHERE grp = %(g)s AND expires_at > now()
    UNION SELECT %(m)s
), me AS (
    SELECT rank, n FROM (
        SELECT member, row_number() OVER (ORDER BY member COLLATE "C") - 1 AS rank,
               count(*) OVER () AS n FROM live
    ) ranked WHERE member = %(m)s
)"""
_WANTED = "p.part %% me.n = me.rank"
# Events of the member's partitions, each after its own position: the lowest position
# bounds the index scan, the others filter (both computed once per statement).
_AFTER_MINE = """id > (SELECT min(position) FROM {mine} WHERE member = %(m)s)
    AND id > (SELECT array_agg(CASE WHEN member = %(m)s THEN position END ORDER BY part)
              FROM {mine})[part + 1]"""
_UPSERT_MEMBER = """INSERT INTO {s}.omniq_members (grp, member, expires_at, host, pid)
    VALUES (%(g)s, %(m)s, now() + %(lease)s::interval, %(host)s, %(pid)s)
    ON CONFLICT (grp, member) DO UPDATE SET expires_at = excluded.expires_at,
        host = excluded.host, pid = excluded.pid"""

_ADVANCE = """UPDATE {s}.omniq_parts SET position = greatest(position, %(through)s),
        expires_at = now() + %(lease)s::interval
    WHERE grp = %(g)s AND member = %(m)s AND part = ANY(%(parts)s)"""

# Every statement, ``{s}`` standing for the schema.
_SQL = {
    # Give up the partitions not wanted, take the wanted free or expired ones (and renew
    # those held, when due); return every partition, and whether this statement moved it.
    "rebalance": _MEMBERS + """, changed AS (
        UPDATE {s}.omniq_parts p SET
            member = CASE WHEN {wanted} THEN %(m)s END,
            expires_at = CASE WHEN {wanted} THEN now() + %(lease)s::interval
                         ELSE '-infinity' END
        FROM me
        WHERE p.grp = %(g)s AND CASE WHEN {wanted}
            THEN p.member IS NULL OR p.expires_at < now() OR (p.member = %(m)s AND %(renew)s)
            ELSE p.member = %(m)s END
        RETURNING p.part, p.position, p.member
    )
    SELECT part, position, member, true FROM changed
    UNION ALL SELECT part, position, member, false FROM {s}.omniq_parts
    WHERE grp = %(g)s AND part NOT IN (SELECT part FROM changed)""",
    "batch": "SELECT id, " + WIRE + " FROM {s}.omniq_events WHERE "
    + _AFTER_MINE.replace("{mine}", "(SELECT part, position, member FROM {s}.omniq_parts "
                          "WHERE grp = %(g)s) mine")
    + " ORDER BY id LIMIT %(n)s",
    "newest": "SELECT max(id) FROM {s}.omniq_events",
    "join_group": "INSERT INTO {s}.omniq_positions (grp) VALUES (%(g)s) "
    "ON CONFLICT (grp) DO NOTHING",
    "join_parts": "INSERT INTO {s}.omniq_parts (grp, part, position) SELECT %(g)s, p, "
    "(SELECT position FROM {s}.omniq_positions WHERE grp = %(g)s) "
    "FROM generate_series(0, {last}) p ON CONFLICT DO NOTHING",
    "upsert_member": _UPSERT_MEMBER,
    "reap": "DELETE FROM {s}.omniq_members WHERE grp = %(g)s AND expires_at < now()",
    # The other members of this host, and the dead among them freed (a member is dead if
    # its row still names the process that is gone).
    "local_members": "SELECT member, pid FROM {s}.omniq_members "
    "WHERE grp = %(g)s AND host = %(host)s AND member <> %(m)s",
    "reap_dead": """WITH gone AS (
        DELETE FROM {s}.omniq_members WHERE grp = %(g)s AND host = %(host)s
        AND (member, pid) IN (SELECT * FROM unnest(%(dead)s::text[], %(pids)s::int[]))
        RETURNING member
    )
    UPDATE {s}.omniq_parts SET member = NULL, expires_at = '-infinity'
    WHERE grp = %(g)s AND member IN (SELECT member FROM gone)""",
    # Acknowledge (move the partitions forward) and renew the partitions; with the member
    # too when its renewal is due.
    "advance": _ADVANCE,
    "advance_member": "WITH alive AS (" + _UPSERT_MEMBER + ") " + _ADVANCE,
    "release_parts": "UPDATE {s}.omniq_parts SET member = NULL, expires_at = '-infinity' "
    "WHERE grp = %(g)s AND member = %(m)s",
    "release_member": "DELETE FROM {s}.omniq_members WHERE grp = %(g)s AND member = %(m)s",
    "notify": "SELECT pg_notify(%(ch)s, '')",
    # A new group: events after its committed position? Else: partitions to take or give
    # up, or events in those held?
    "has_events": _MEMBERS + """, state AS (
        SELECT p.part, p.position, p.member, p.expires_at, {wanted} AS wanted
        FROM {s}.omniq_parts p, me WHERE p.grp = %(g)s
    )
    SELECT CASE WHEN (SELECT count(*) FROM state) < {count}
    THEN EXISTS (SELECT 1 FROM {s}.omniq_events WHERE id > coalesce(
        (SELECT position FROM {s}.omniq_positions WHERE grp = %(g)s), 0))
    ELSE EXISTS (SELECT 1 FROM state WHERE CASE WHEN wanted
            THEN member IS NULL OR expires_at < now() ELSE member = %(m)s END)
        OR EXISTS (SELECT 1 FROM {s}.omniq_events WHERE """
    + _AFTER_MINE.replace("{mine}", "state") + """)
    END""",
    "commit_group": "INSERT INTO {s}.omniq_positions (grp, position) VALUES (%(g)s, %(p)s) "
    "ON CONFLICT (grp) DO UPDATE SET position = excluded.position, updated_at = now()",
    "commit_parts": "UPDATE {s}.omniq_parts SET position = %(p)s WHERE grp = %(g)s",
    "position": "SELECT coalesce((SELECT min(position) FROM {s}.omniq_parts "
    "WHERE grp = %(g)s), (SELECT position FROM {s}.omniq_positions WHERE grp = %(g)s))",
    "positions": "SELECT g.grp, coalesce(min(p.position), g.position) "
    "FROM {s}.omniq_positions g LEFT JOIN {s}.omniq_parts p ON p.grp = g.grp "
    "GROUP BY g.grp, g.position",
}


def _statements(schema: str) -> dict[str, str]:
    """The statements of :data:`_SQL` for ``schema``."""
    return {name: sql.format(s=schema, wanted=_WANTED, last=PARTITIONS - 1, count=PARTITIONS)
            for name, sql in _SQL.items()}


@dataclass
class _Held:
    """What a member got at its last claim."""

    parts: list[int]  # the partitions it holds
    through: int  # everything of them up to here is in the batch (or was handled)


class Groups:
    """Claims, acknowledgements and leases of every group, for one backend instance.

    Args:
        schema: the schema holding the tables.
        channel: the NOTIFY channel that wakes waiting processors.
        lease_seconds: how long a member holds its partitions without renewing them.
    """

    def __init__(self, schema: str, channel: str, lease_seconds: float) -> None:
        self.schema = schema
        self.channel = channel
        self.lease = f"{lease_seconds} seconds"
        self.renew_every = lease_seconds / 3
        self._sql = _statements(schema)
        self._held: dict[Consumer, _Held] = {}
        self._renewed: dict[Consumer, float] = {}  # when each member last renewed
        self._known: set[str] = set()  # groups whose partitions exist

    # -- positions -----------------------------------------------------------------------
    async def commit_position(self, conn: Any, group: str, position: int) -> None:
        """Set the position of ``group`` and of each of its partitions."""
        async with conn.transaction():
            for name in ("commit_group", "commit_parts"):
                await conn.execute(self._sql[name], {"g": group, "p": position})

    async def get_position(self, conn: Any, group: str) -> int | None:
        """The group's position, ``None`` before anything was handled."""
        cur = await conn.execute(self._sql["position"], {"g": group})
        row = await cur.fetchone()
        return int(row[0]) if row and row[0] else None

    async def positions(self, conn: Any) -> dict[str, int]:
        """Every group's position."""
        cur = await conn.execute(self._sql["positions"])
        return {grp: int(pos) for grp, pos in await cur.fetchall() if pos}

    # -- claiming ------------------------------------------------------------------------
    async def claim(self, conn: Any, consumer: Consumer, limit: int) -> list[StoredEvent]:
        """Rebalance the group's partitions, then read the next events of those held."""
        args = self._args(consumer)
        args.update(n=limit, renew=self._renew_due(consumer), ch=self.channel)
        if consumer not in self._renewed:  # joining: the dead of this host leave first
            await self._reap_dead(conn, args)
        async with conn.pipeline():
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock(consumer),))
                await self._join_or_renew(conn, consumer, args)
                parts_cur = await conn.execute(self._sql["rebalance"], args)
            newest_cur = await conn.execute(self._sql["newest"])
            batch_cur = await conn.execute(self._sql["batch"], args)
            local_cur = await conn.execute(self._sql["local_members"], args)
        self._known.add(consumer.group)
        if args["renew"]:
            self._renewed[consumer] = time.monotonic()
        parts = await parts_cur.fetchall()
        newest = (await newest_cur.fetchone())[0] or 0
        rows = await batch_cur.fetchall()
        await self._reap_dead(conn, args, await local_cur.fetchall())  # for the next claim
        if any(changed and member is None for _, _, member, changed in parts):
            await conn.execute(self._sql["notify"], args)  # partitions given up
        mine = {int(part): int(pos) for part, pos, member, _ in parts
                if member == consumer.member}
        if not mine:
            self._held.pop(consumer, None)
            return []
        through = int(rows[-1][0]) if len(rows) >= limit else max(
            int(newest), int(rows[-1][0]) if rows else 0, min(mine.values()))
        held = self._held[consumer] = _Held(sorted(mine), through)
        if not rows and any(pos < through for pos in mine.values()):
            await self._move(conn, consumer, held)  # nothing of ours up to ``through``
        return stored_rows(rows)

    async def _join_or_renew(self, conn: Any, consumer: Consumer, args: dict[str, Any]) -> None:
        """On a first claim create the group's partitions and announce the member; when
        due, renew the member's row and drop expired members."""
        if consumer.group not in self._known:
            for name in ("join_group", "join_parts"):
                await conn.execute(self._sql[name], args)
        if consumer not in self._renewed:  # a member joins: the others hand partitions over
            await conn.execute(self._sql["notify"], args)
        if args["renew"]:
            await conn.execute(self._sql["upsert_member"], args)
            await conn.execute(self._sql["reap"], args)

    async def ack(self, conn: Any, consumer: Consumer) -> None:
        """Move the held partitions past the batch ``consumer`` claimed last."""
        held = self._held.get(consumer)
        if held is not None:
            await self._move(conn, consumer, held)

    async def renew(self, conn: Any, consumer: Consumer) -> None:
        """Keep the member and its partitions its own for another lease."""
        await self._move(conn, consumer, _Held(_ALL_PARTS, 0), member=True)

    async def renew_if_due(self, conn: Any, consumer: Consumer) -> None:
        """Renew a member that claimed before, once a third of its lease passed."""
        if consumer in self._renewed and self._renew_due(consumer):
            await self.renew(conn, consumer)

    async def release(self, conn: Any, consumer: Consumer) -> None:
        """Leave the group: free the member's partitions and wake the other members."""
        self._held.pop(consumer, None)
        self._renewed.pop(consumer, None)
        args = {**self._args(consumer), "ch": self.channel}
        async with conn.transaction():
            for name in ("release_parts", "release_member", "notify"):
                await conn.execute(self._sql[name], args)

    async def has_events_for(self, conn: Any, consumer: Consumer) -> bool:
        """Whether a claim would do something: partitions to take or give up, or events."""
        args = self._args(consumer)
        async with conn.pipeline():
            has_cur = await conn.execute(self._sql["has_events"], args)
            local_cur = await conn.execute(self._sql["local_members"], args)
        found = bool((await has_cur.fetchone())[0])
        return await self._reap_dead(conn, args, await local_cur.fetchall()) or found

    # -- steps ---------------------------------------------------------------------------
    async def _reap_dead(
        self, conn: Any, args: dict[str, Any], local: list[Any] | None = None
    ) -> bool:
        """Free the partitions of the group's members whose process on this host is gone
        (``local``: the other members of this host, read here when not given), and wake
        the others to take them. Returns whether any was dead."""
        if local is None:
            cur = await conn.execute(self._sql["local_members"], args)
            local = await cur.fetchall()
        dead = [(member, pid) for member, pid in local if pid_gone(int(pid))]
        if dead:
            reap = {**args, "dead": [m for m, _ in dead], "pids": [p for _, p in dead],
                    "ch": self.channel}
            async with conn.transaction():
                await conn.execute(self._sql["reap_dead"], reap)
                await conn.execute(self._sql["notify"], reap)
        return bool(dead)

    async def _move(
        self, conn: Any, consumer: Consumer, held: _Held, *, member: bool = False
    ) -> None:
        """Move ``held``'s partitions forward to its ``through`` and renew them; renew the
        member too when ``member`` or when due."""
        args = self._args(consumer)
        args.update(through=held.through, parts=held.parts)
        if member or self._renew_due(consumer):
            await conn.execute(self._sql["advance_member"], args)
            self._renewed[consumer] = time.monotonic()
        else:
            await conn.execute(self._sql["advance"], args)

    def _args(self, consumer: Consumer) -> dict[str, Any]:
        return {"g": consumer.group, "m": consumer.member, "lease": self.lease,
                "host": HOST, "pid": os.getpid()}

    def _renew_due(self, consumer: Consumer) -> bool:
        renewed = self._renewed.get(consumer)
        return renewed is None or time.monotonic() - renewed >= self.renew_every

    def _lock(self, consumer: Consumer) -> int:
        return lock_key(self.schema, f"group:{consumer.group}")


def stored_rows(rows: list[Any]) -> list[StoredEvent]:
    """``(id, wire text)`` rows as stored events (a row that does not decode as an
    ``UndecodableEvent``, so a claim never fails after its partitions moved)."""
    return [decode_stored(int(pos), body) for pos, body in rows]
