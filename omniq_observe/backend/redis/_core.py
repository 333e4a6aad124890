"""The core of :mod:`omniq_observe.backend.redis` that its parts depend on: the store's keys,
stream ids, and the entries they hold.

A store keeps its events in ``partitions`` streams: the events of one task all go to the
stream of :func:`~omniq_observe.backend._partitions.partition_of` its ``task_id``. Entry ids
are unique across the streams and grow in append order (the append script hands them out
from one counter), so the streams merged by id form the one log of the storage contract, and
a position (an entry id) means the same place in all of them.

A store of one partition keeps its one stream under ``<prefix>:events``, the key of stores
made before partitions existed; a store of ``N > 1`` partitions under
``<prefix>:events:0`` .. ``<prefix>:events:<N-1>``.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from omniq_observe.backend._partitions import partition_of
from omniq_observe.backend.base import StoredEvent, decode_stored

__all__ = [
    "Entry",
    "Keys",
    "Owner",
    "dedup_bucket",
    "dedup_id",
    "entry_body",
    "id_str",
    "parse_stream_id",
    "predecessor",
    "raw_reply",
    "stored_entries",
]

Entry = tuple[Any, Any]
_MAX_SEQ = 2**64 - 1


class Keys:
    """The keys of one store of ``partitions`` streams under ``prefix``."""

    __slots__ = ("dedup", "last_id", "late", "partitions", "positions", "prefix", "streams",
                 "task_prefix")

    def __init__(self, prefix: str, partitions: int) -> None:
        self.prefix = prefix
        self.partitions = partitions
        #: The stream of each partition, by partition number.
        self.streams = (f"{prefix}:events",) if partitions == 1 else tuple(
            f"{prefix}:events:{p}" for p in range(partitions))
        self.task_prefix = f"{prefix}:task:"  # task index lists: <prefix>:task:<task_id>
        self.late = f"{prefix}:late"  # "<id>/<partition>" of late events, by event time
        self.positions = f"{prefix}:positions"  # the groups' committed positions
        self.last_id = f"{prefix}:last_id"  # the last entry id handed out, over all streams
        self.dedup = f"{prefix}:dedup"  # the ids of recent appends, see APPEND_SCRIPT

    def stream_of(self, task_id: str) -> str:
        """The stream that holds the events of ``task_id``."""
        return self.streams[partition_of(task_id, self.partitions)]

    def group_keys(self, group: str) -> tuple[str, str, str]:
        """The live members (sorted set by lease end), the partition leases and where the
        members run (hash: member -> "<host> <pid>") of ``group``."""
        prefix = self.prefix
        return f"{prefix}:members:{group}", f"{prefix}:leases:{group}", f"{prefix}:hosts:{group}"


class Owner(Protocol):
    """What the parts need of the backend: its client, its keys and its timing."""

    claim_idle: float
    claim_interval: float
    socket_timeout: float

    def client(self) -> Any:
        """The redis-py asyncio client."""

    def script(self, name: str) -> Any:
        """The registered Lua script ``name`` of ``_scripts``."""

    @property
    def keys(self) -> Keys:
        """The store's keys (known once the store was opened)."""


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def dedup_id(event_id: str) -> bytes:
    """An event id as the dedup state keeps it: a lowercase UUID as its 16 bytes, another id
    (ASCII) as is, behind a byte 255 when it is 16 long (so it is no UUID's bytes)."""
    if len(event_id) == 36 and _UUID.fullmatch(event_id):
        return bytes.fromhex(event_id.replace("-", ""))
    raw = event_id.encode()
    return b"\xff" + raw if len(raw) == 16 else raw


def dedup_bucket(packed: bytes, buckets: int) -> int:
    """The bucket of a dedup id (as the ``bucket`` function of the Lua scripts)."""
    value = 0
    for byte in packed[-3:]:
        value = value * 31 + byte
    return value % buckets


def id_str(value: Any) -> str:
    """Return a stream id (bytes or str) as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_stream_id(value: Any) -> tuple[int, int]:
    """Return a ``ms-seq`` stream id as a sortable ``(ms, seq)`` tuple."""
    ms, _, seq = id_str(value).partition("-")
    return int(ms), int(seq or 0)


def predecessor(value: Any) -> str | None:
    """Return the stream id just before ``value`` (``None`` before ``0-1``)."""
    ms, seq = parse_stream_id(value)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    if ms > 0:
        return f"{ms - 1}-{_MAX_SEQ}"
    return None


def stored_entries(entries: list[Entry]) -> list[StoredEvent]:
    """Stream entries ``(id, {b"e": body})`` as stored events (an entry that does not
    decode as an ``UndecodableEvent``)."""
    return [decode_stored(id_str(key), fields.get(b"e")) for key, fields in entries]


def entry_body(fields: list[bytes] | None) -> bytes | None:
    """The ``e`` field of an entry's fields as Redis sent them (``None``: the entry was
    deleted, or has none)."""
    return dict(zip(fields[::2], fields[1::2], strict=True)).get(b"e") if fields else None


def raw_reply(response: Any, **options: Any) -> Any:
    """A response callback that leaves a reply as Redis sent it: redis-py turns each
    entry's fields into a dict, which a reader of many entries need not pay for."""
    return response
