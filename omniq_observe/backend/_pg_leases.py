"""Processor groups of :mod:`omniq_observe.backend.postgres`: cursors and leased batches.

``omniq_positions(grp, delivered)`` is each group's delivered cursor. ``claim`` locks the
group's row (so members of one group claim one after another), takes the next events after
the cursor, records them as a lease ``(after_id, last_id]`` held by the member until
``expires_at`` and moves the cursor past them; ``ack`` deletes the lease. An expired lease
(its member died, or released it) is taken over whole by the next member that claims.
The group's position is the start of its oldest lease, else its cursor.

Every function takes an open autocommit connection; the caller retries and translates
errors.
"""

from __future__ import annotations

from typing import Any

from omniq_observe.backend._pg_schema import WIRE
from omniq_observe.backend.base import Consumer, StoredEvent, decode_stored

__all__ = ["LeaseTable", "stored_rows"]


class LeaseTable:
    """The SQL of claiming and acknowledging for one schema.

    Args:
        schema: the schema holding the tables.
        channel: the NOTIFY channel that wakes waiting processors.
        lease_seconds: how long a claimed batch stays with its member.
    """

    def __init__(self, schema: str, channel: str, lease_seconds: float) -> None:
        self.events = f"{schema}.omniq_events"
        self.positions_table = f"{schema}.omniq_positions"
        self.leases = f"{schema}.omniq_leases"
        self.channel = channel
        self.lease = f"{lease_seconds} seconds"
        self._held: dict[Consumer, int] = {}

    # -- positions -----------------------------------------------------------------------
    async def commit_position(self, conn: Any, group: str, pos: int) -> None:
        """Set the group's cursor; leases it covers are done."""
        async with conn.transaction():
            await conn.execute(
                f"INSERT INTO {self.positions_table} (grp, delivered) VALUES (%s, %s) "
                "ON CONFLICT (grp) DO UPDATE SET delivered = excluded.delivered, "
                "updated_at = now()",
                (group, pos),
            )
            await conn.execute(
                f"DELETE FROM {self.leases} WHERE grp = %s "
                "AND (last_id <= %s OR after_id >= %s)",
                (group, pos, pos),
            )

    async def get_position(self, conn: Any, group: str) -> int | None:
        """The group's position, ``None`` before anything was handled."""
        cur = await conn.execute(
            f"SELECT coalesce((SELECT min(after_id) FROM {self.leases} WHERE grp = %s), "
            f"delivered) FROM {self.positions_table} WHERE grp = %s",
            (group, group),
        )
        row = await cur.fetchone()
        return int(row[0]) if row and row[0] else None

    async def positions(self, conn: Any) -> dict[str, int]:
        """Every group's position."""
        cur = await conn.execute(
            f"SELECT p.grp, coalesce(min(l.after_id), p.delivered) "
            f"FROM {self.positions_table} p LEFT JOIN {self.leases} l ON l.grp = p.grp "
            "GROUP BY p.grp, p.delivered"
        )
        return {grp: int(pos) for grp, pos in await cur.fetchall() if pos}

    # -- claiming ------------------------------------------------------------------------
    async def claim(self, conn: Any, consumer: Consumer, limit: int) -> list[StoredEvent]:
        """Take an expired lease of the group over, else lease the next ``limit`` events."""
        async with conn.transaction():
            taken = await self._claim(conn, consumer, limit)
        if taken is None:
            self._held.pop(consumer, None)
            return []
        self._held[consumer] = taken[0]
        return stored_rows(taken[1])

    async def _claim(
        self, conn: Any, consumer: Consumer, limit: int
    ) -> tuple[int, list[Any]] | None:
        group = consumer.group
        cur = await conn.execute(  # creates the group and takes its row lock
            f"INSERT INTO {self.positions_table} (grp) VALUES (%s) ON CONFLICT (grp) "
            "DO UPDATE SET grp = excluded.grp RETURNING delivered",
            (group,),
        )
        delivered = (await cur.fetchone())[0]
        cur = await conn.execute(
            f"SELECT after_id, last_id FROM {self.leases} WHERE grp = %s "
            "AND expires_at < now() ORDER BY after_id LIMIT 1",
            (group,),
        )
        expired = await cur.fetchone()
        if expired is not None:
            after_id, last_id = expired
            cur = await conn.execute(
                f"SELECT id, {WIRE} FROM {self.events} WHERE id > %s AND id <= %s ORDER BY id",
                (after_id, last_id),
            )
            rows = await cur.fetchall()
            if rows:
                await conn.execute(
                    f"UPDATE {self.leases} SET member = %s, expires_at = now() + %s::interval "
                    "WHERE grp = %s AND after_id = %s",
                    (consumer.member, self.lease, group, after_id),
                )
                return after_id, rows
            await conn.execute(  # its events were pruned meanwhile
                f"DELETE FROM {self.leases} WHERE grp = %s AND after_id = %s", (group, after_id)
            )
        cur = await conn.execute(
            f"SELECT id, {WIRE} FROM {self.events} WHERE id > %s ORDER BY id LIMIT %s",
            (delivered, limit),
        )
        rows = await cur.fetchall()
        if not rows:
            return None
        last = rows[-1][0]
        await conn.execute(
            f"INSERT INTO {self.leases} (grp, after_id, last_id, member, expires_at) "
            "VALUES (%s, %s, %s, %s, now() + %s::interval)",
            (group, delivered, last, consumer.member, self.lease),
        )
        await conn.execute(
            f"UPDATE {self.positions_table} SET delivered = %s, updated_at = now() "
            "WHERE grp = %s",
            (last, group),
        )
        return delivered, rows

    async def ack(self, conn: Any, consumer: Consumer) -> None:
        """Delete the lease of the batch ``consumer`` claimed last (if still its own)."""
        after_id = self._held.get(consumer)
        if after_id is None:
            return
        await conn.execute(
            f"DELETE FROM {self.leases} WHERE grp = %s AND after_id = %s AND member = %s",
            (consumer.group, after_id, consumer.member),
        )
        self._held.pop(consumer, None)

    async def renew(self, conn: Any, consumer: Consumer) -> None:
        """Extend the lease of the batch ``consumer`` claimed last (if still its own)."""
        after_id = self._held.get(consumer)
        if after_id is not None:
            await conn.execute(
                f"UPDATE {self.leases} SET expires_at = now() + %s::interval "
                "WHERE grp = %s AND after_id = %s AND member = %s",
                (self.lease, consumer.group, after_id, consumer.member),
            )

    async def release(self, conn: Any, consumer: Consumer) -> None:
        """Expire the member's leases and wake the other members."""
        self._held.pop(consumer, None)
        async with conn.transaction():
            await conn.execute(
                f"UPDATE {self.leases} SET expires_at = now() - interval '1 second' "
                "WHERE grp = %s AND member = %s",
                (consumer.group, consumer.member),
            )
            await conn.execute("SELECT pg_notify(%s, '')", (self.channel,))

    async def has_events_for(self, conn: Any, consumer: Consumer) -> bool:
        """Whether the group has events after its cursor or an expired lease."""
        cur = await conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM {self.events} WHERE id > coalesce("
            f"(SELECT delivered FROM {self.positions_table} WHERE grp = %s), 0)) "
            f"OR EXISTS (SELECT 1 FROM {self.leases} WHERE grp = %s AND expires_at < now())",
            (consumer.group, consumer.group),
        )
        row = await cur.fetchone()
        return bool(row[0])


def stored_rows(rows: list[Any]) -> list[StoredEvent]:
    """``(id, wire text)`` rows as stored events (a row that does not decode as an
    ``UndecodableEvent``, so a claim never fails after its lease was committed)."""
    return [decode_stored(int(pos), body) for pos, body in rows]
