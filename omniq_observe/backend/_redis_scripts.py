"""Lua scripts and small helpers of :mod:`omniq_observe.backend.redis`.

The scripts run inside Redis, so that each event and its task-history index entry are
written together (one round trip for a whole batch, nothing half-written if the client
dies), and so that a task's history comes back in one round trip.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "APPEND_SCRIPT",
    "HISTORY_SCRIPT",
    "id_str",
    "parse_stream_id",
    "predecessor",
]

# KEYS[1] stream. ARGV: task-key prefix, history TTL (ms), MAXLEN (0: none), then
# (task_id, body) pairs. XADD each body, push its id onto the task's index list and
# refresh the list's TTL. Returns the last id written.
APPEND_SCRIPT = """
local stream, prefix = KEYS[1], ARGV[1]
local ttl, maxlen = tonumber(ARGV[2]), tonumber(ARGV[3])
local id = false
for i = 4, #ARGV, 2 do
  if maxlen > 0 then
    id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', ARGV[i + 1])
  else
    id = redis.call('XADD', stream, '*', 'e', ARGV[i + 1])
  end
  local key = prefix .. ARGV[i]
  redis.call('RPUSH', key, id)
  redis.call('PEXPIRE', key, ttl)
end
return id
"""

# KEYS[1] stream, KEYS[2] the task's index list; ARGV[1] limit. Returns the bodies of
# the task's events still in the stream (pruned ones are skipped), oldest first.
HISTORY_SCRIPT = """
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
local limit = tonumber(ARGV[1])
local out = {}
for _, id in ipairs(ids) do
  if #out >= limit then break end
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found > 0 then
    local fields = found[1][2]
    for j = 1, #fields, 2 do
      if fields[j] == 'e' then out[#out + 1] = fields[j + 1] end
    end
  end
end
return out
"""

_MAX_SEQ = 2**64 - 1


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
