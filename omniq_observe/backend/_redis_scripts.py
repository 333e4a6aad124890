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
    "PRUNE_SCRIPT",
    "id_str",
    "parse_stream_id",
    "predecessor",
]

# KEYS: the stream, the current and the previous recent-id set, the late index.
# ARGV: task-key prefix, history TTL (ms), MAXLEN (0: none), ids per recent-id set,
# the margin (ms), then (task_id, event_id, event time in ms, body) per event.
#
# * An event whose id is in either recent-id set was stored already (a retry after a lost
#   reply): it is skipped. When the current set holds ``window`` ids it becomes the
#   previous one, so the last ``window`` to ``2 * window`` ids are remembered.
# * The entry id is the event time (``<ms>-*``) while events come in time order, so the
#   stream is ordered by event time and ``query``/``prune`` can seek into it. An event older
#   than the last id gets the next id (``*``); one later than it by more than the margin
#   (``id - time > margin``) is put in the late index (a sorted set by event time), where
#   ``query(until=)`` and ``prune`` find it. A time more than the margin ahead of the
#   server's clock is stored at the clock plus the margin. Under MAXLEN the late index
#   keeps at most MAXLEN ids (the latest by event time).
# * The entry holds ``e`` (the wire form) and ``t`` (the task id, for prune); its id is
#   pushed onto the task's index list, whose TTL is refreshed.
# Returns the number of events written.
APPEND_SCRIPT = """
local stream, recent, older, late = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, ttl, maxlen = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local window, margin = tonumber(ARGV[4]), tonumber(ARGV[5])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local last = 0  -- the stream's last id (ms) as far as known: an older id is refused
local function xadd(spec, body, task)
  if maxlen > 0 then
    return redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, spec, 'e', body, 't', task)
  end
  return redis.pcall('XADD', stream, spec, 'e', body, 't', task)
end
local written, lates = 0, 0
for i = 6, #ARGV, 4 do
  local event_id = ARGV[i + 1]
  if redis.call('SISMEMBER', older, event_id) == 0
      and redis.call('SADD', recent, event_id) == 1 then
    local time = tonumber(ARGV[i + 2])
    local ms = math.max(0, math.min(time, now + margin))
    local body, task = ARGV[i + 3], ARGV[i]
    local spec = '*'
    if ms >= last then spec = string.format('%d-*', ms) end
    local id = xadd(spec, body, task)
    if type(id) == 'table' and id.err and spec ~= '*' then
      -- older than the stream's last id (or Redis before 7.0, which takes no '<ms>-*'):
      -- the next id
      id = xadd('*', body, task)
    end
    if type(id) == 'table' and id.err then
      redis.call('SREM', recent, event_id)  -- not stored: a retry must not be skipped
      return redis.error_reply(id.err)
    end
    last = tonumber(string.match(id, '^(%d+)'))
    if last - time > margin then
      redis.call('ZADD', late, time, id)
      lates = lates + 1
    end
    local key = prefix .. task
    redis.call('RPUSH', key, id)
    redis.call('PEXPIRE', key, ttl)
    written = written + 1
  end
end
if redis.call('SCARD', recent) >= window then redis.call('RENAME', recent, older) end
if lates > 0 and maxlen > 0 then  -- under MAXLEN the late index stays as bounded
  local size = redis.call('ZCARD', late)
  if size > maxlen then redis.call('ZREMRANGEBYRANK', late, 0, size - maxlen - 1) end
end
return written
"""

# KEYS[1] stream; ARGV: task-key prefix, the last id to delete, the most entries to delete.
# Deletes the oldest entries up to that id (XTRIM MINID) and removes their ids from the
# head of their tasks' index lists (an emptied list is gone). Returns the number deleted.
PRUNE_SCRIPT = """
local stream, prefix = KEYS[1], ARGV[1]
local entries = redis.call('XRANGE', stream, '-', ARGV[2], 'COUNT', tonumber(ARGV[3]))
if #entries == 0 then return 0 end
local function key_of(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local last = entries[#entries][1]
local last_ms, last_seq = key_of(last)
local tasks = {}
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 't' then
      local task = fields[j + 1]
      tasks[task] = (tasks[task] or 0) + 1
    end
  end
end
-- A task's list holds its ids in id order: drop its leading ids up to the chunk's last.
for task, count in pairs(tasks) do
  local key, drop = prefix .. task, 0
  while true do
    local ids = redis.call('LRANGE', key, drop, drop + count)
    local older = 0
    for _, head in ipairs(ids) do
      local ms, seq = key_of(head)
      if ms > last_ms or (ms == last_ms and seq > last_seq) then break end
      older = older + 1
    end
    drop = drop + older
    if older < #ids or #ids == 0 then break end
  end
  if drop > 0 then redis.call('LTRIM', key, drop, -1) end
end
return redis.call('XTRIM', stream, 'MINID', string.format('%d-%d', last_ms, last_seq + 1))
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
