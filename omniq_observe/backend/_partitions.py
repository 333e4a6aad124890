"""Task routing of processor groups, shared by every backend that has groups.

Processors of one name (a group) split the log into partitions by a hash of ``task_id``,
so every event of one task goes to the same member and each member's pairing sees whole
tasks. All backends hash the same way, so one task lands in the same partition number
whatever the storage. A member whose process on this machine is gone counts as dead at once
(its partitions are taken over without waiting for its lease).
"""

from __future__ import annotations

import os
import socket
import zlib

__all__ = ["HOST", "PARTITIONS", "partition_of", "pid_gone"]

#: This machine's name: a group member on it whose process is gone is dead at once.
HOST = socket.gethostname()

#: The default number of task partitions of a processor group.
PARTITIONS = 16


def partition_of(task_id: str, partitions: int = PARTITIONS) -> int:
    """The partition of ``task_id``: CRC-32 of its UTF-8 bytes modulo ``partitions``."""
    return zlib.crc32(task_id.encode("utf-8", "surrogatepass")) % partitions


def pid_gone(pid: int) -> bool:
    """Whether process ``pid`` of this host no longer exists (POSIX; elsewhere: unknown)."""
    if os.name != "posix" or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, owned by someone else
        return False
    return False
