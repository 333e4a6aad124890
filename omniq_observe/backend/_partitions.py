"""Task routing of processor groups, shared by every backend that has groups.

Processors of one name (a group) split the log into partitions by a hash of ``task_id``,
so every event of one task goes to the same member and each member's pairing sees whole
tasks. All backends hash the same way, so one task lands in the same partition number
whatever the storage.
"""

from __future__ import annotations

import zlib

__all__ = ["PARTITIONS", "partition_of"]

#: The default number of task partitions of a processor group.
PARTITIONS = 16


def partition_of(task_id: str, partitions: int = PARTITIONS) -> int:
    """The partition of ``task_id``: CRC-32 of its UTF-8 bytes modulo ``partitions``."""
    return zlib.crc32(task_id.encode("utf-8", "surrogatepass")) % partitions
