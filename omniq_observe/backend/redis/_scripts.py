"""Lua scripts of :mod:`omniq_observe.backend.redis`.

The scripts run inside Redis, so that each event and its task-history index entry are
written together (one round trip for a whole batch, nothing half-written if the client
dies), that a task's history comes back in one round trip, and that a group member's
partition leases change in one step.
"""

from __future__ import annotations

__all__ = ["APPEND_SCRIPT", "DEDUP_BUCKETS", "HISTORY_SCRIPT", "LEASE_SCRIPT", "PRUNE_SCRIPT"]

#: Hashes per dedup generation: at the default ``dedup_window`` (50,000) about 50 ids
#: each, well within the 128 fields of a compact (listpack) hash.
DEDUP_BUCKETS = 1024

# The dedup bucket of a dedup id: its last three bytes (random in a UUID), mixed.
# ``_core.dedup_bucket`` is the same function in Python.
_BUCKET = f"""
local function bucket(id)
  local x, y, z = string.byte(id, -3, -1)
  if #id < 3 then  -- zeros in front
    x, y, z = 0, (#id == 2 and x or 0), (#id == 2 and y or x)
  end
  return (x * 961 + y * 31 + z) % {DEDUP_BUCKETS}
end
local DEDUP_BUCKETS = {DEDUP_BUCKETS}
"""

# KEYS: the dedup state (a hash), the late index, the last id handed out, the two
# recent-id sets of stores before the dedup state (deleted at its first turn), then the
# stream of each partition.
# ARGV: task-key prefix, history TTL (ms), MAXLEN per stream (0: none), ids per dedup
# generation, the margin (ms), the most ids the late index keeps under MAXLEN, then
# (task_id, dedup id, event time in ms * 1024 + partition, body) per event (one number for
# two: a write costs per argument).
#
# * Dedup: an event whose dedup id (its event id, a UUID as its 16 bytes, see
#   ``_core.dedup_id``) is remembered was stored already (a retry after a lost reply): it is
#   skipped. The ids are kept by generation ``g`` (a field of the state) in
#   :data:`DEDUP_BUCKETS` small hashes ``<state>:<g>:<bucket>`` (Redis stores a small hash
#   as one compact listpack, a fifth of a set's memory per id). When the current
#   generation holds ``window`` ids a new one starts and the one before the previous is
#   deleted, so the last ``window`` to ``2 * window`` ids are remembered. The state also
#   holds the last entry id before the previous generation began (``o``): prune removes
#   the ids of the entries it deletes after it (``PRUNE_SCRIPT``).
APPEND_SCRIPT = _BUCKET + """
local dedup, late, last_key = KEYS[1], KEYS[2], KEYS[3]
local prefix, ttl, maxlen = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local window, margin, bound = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function top(stream)  -- the last id a stream handed out (0-0: none)
  local info = redis.pcall('XINFO', 'STREAM', stream)
  if type(info) == 'table' and not info.err then
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then return split(info[j + 1]) end
    end
  end
  return 0, 0
end
local function later(ms, seq, ms2, seq2)
  return ms2 > ms or (ms2 == ms and seq2 > seq)
end
local last_ms, last_seq = 0, 0  -- the first id is 0-1 at the earliest
local known = redis.call('GET', last_key)
if known then
  last_ms, last_seq = split(known)
else  -- a store from before the counter: continue after every stream's last id
  for k = 6, #KEYS do
    local ms, seq = top(KEYS[k])
    if later(last_ms, last_seq, ms, seq) then last_ms, last_seq = ms, seq end
  end
end
local function xadd(stream, id, body, task)
  if maxlen > 0 then
    return redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, id, 'e', body, 't', task)
  end
  return redis.pcall('XADD', stream, id, 'e', body, 't', task)
end
local state = redis.call('HMGET', dedup, 'g', 'n', 's')
local gen, count = tonumber(state[1] or '0'), tonumber(state[2] or '0')
local current, previous = dedup .. ':' .. gen .. ':', dedup .. ':' .. (gen - 1) .. ':'
local pushes = {}  -- task -> the ids to push onto its index list
local function push()  -- one RPUSH and PEXPIRE a task
  for task, ids in pairs(pushes) do
    local key = prefix .. task
    redis.call('RPUSH', key, unpack(ids))
    redis.call('PEXPIRE', key, ttl)
  end
end
local currents, previouses = {}, {}  -- bucket -> its key (made once)
local written, lates = 0, 0
for i = 7, #ARGV, 4 do
  local event_id = ARGV[i + 1]
  local b = bucket(event_id)
  local here, there = currents[b], previouses[b]
  if here == nil then
    here, there = current .. b, previous .. b
    currents[b], previouses[b] = here, there
  end
  if redis.call('HEXISTS', there, event_id) == 0
      and redis.call('HSETNX', here, event_id, '') == 1 then
    local packed = tonumber(ARGV[i + 2])
    local part = packed % 1024
    local time = (packed - part) / 1024
    local ms = math.max(0, math.min(time, now + margin))
    local body, task, stream = ARGV[i + 3], ARGV[i], KEYS[6 + part]
    local id_ms, id_seq = last_ms, last_seq + 1
    if ms > last_ms then id_ms, id_seq = ms, 0 end
    local id = xadd(stream, string.format('%d-%d', id_ms, id_seq), body, task)
    if type(id) == 'table' and id.err then
      -- the stream holds a later id (an entry written behind our back): continue after it
      local ms2, seq2 = top(stream)
      if later(id_ms, id_seq, ms2, seq2 + 1) then id_ms, id_seq = ms2, seq2 + 1 end
      id = xadd(stream, string.format('%d-%d', id_ms, id_seq), body, task)
    end
    if type(id) == 'table' and id.err then
      redis.call('HDEL', here, event_id)  -- not stored: a retry must not be skipped
      push()
      return redis.error_reply(id.err)
    end
    last_ms, last_seq = id_ms, id_seq
    if id_ms - time > margin then
      redis.call('ZADD', late, time, id .. '/' .. part)
      lates = lates + 1
    end
    local ids = pushes[task]
    if ids == nil then
      ids = {}
      pushes[task] = ids
    end
    ids[#ids + 1] = id
    written = written + 1
  end
end
push()
local last = string.format('%d-%d', last_ms, last_seq)
if written > 0 then redis.call('SET', last_key, last) end
if count + written >= window then  -- a new generation; the one before the previous goes
  local gone = dedup .. ':' .. (gen - 1) .. ':'
  for b = 0, DEDUP_BUCKETS - 1, 512 do
    local names = {}
    for j = b, math.min(b + 511, DEDUP_BUCKETS - 1) do names[#names + 1] = gone .. j end
    redis.call('DEL', unpack(names))
  end
  redis.call('DEL', KEYS[4], KEYS[5])
  redis.call('HSET', dedup, 'g', gen + 1, 'n', 0, 's', last, 'o', state[3] or '0-0')
elseif written > 0 then
  redis.call('HINCRBY', dedup, 'n', written)
end
if lates > 0 and maxlen > 0 then  -- under MAXLEN the late index stays as bounded
  local size = redis.call('ZCARD', late)
  if size > bound then redis.call('ZREMRANGEBYRANK', late, 0, size - bound - 1) end
end
return written
"""

# As ``_core.dedup_id``: an event id as the dedup state keeps it.
_DEDUP_ID = """
local UUID = '^' .. string.rep('%x', 8) .. '%-' .. string.rep('%x', 4) .. '%-'
  .. string.rep('%x', 4) .. '%-' .. string.rep('%x', 4) .. '%-' .. string.rep('%x', 12) .. '$'
local function dedup_id(id)
  if #id == 36 and string.find(id, UUID) and not string.find(id, '[A-F]') then
    local hex = string.gsub(id, '-', '')
    return (string.gsub(hex, '%x%x', function(h) return string.char(tonumber(h, 16)) end))
  end
  if #id == 16 then return '\\255' .. id end
  return id
end
"""

# KEYS[1] stream, KEYS[2] the dedup state; ARGV: task-key prefix, the last id to delete,
# the most entries to delete.
# Deletes the oldest entries up to that id (XTRIM MINID), removes their ids from the head
# of their tasks' index lists (``LPOP``, one call a task; an emptied list is gone) and
# their event ids from the dedup state (only entries after its ``o`` can be there: in a
# prune of old events, none). Returns the number deleted.
PRUNE_SCRIPT = _BUCKET + _DEDUP_ID + """
local stream, dedup, prefix = KEYS[1], KEYS[2], ARGV[1]
local entries = redis.call('XRANGE', stream, '-', ARGV[2], 'COUNT', tonumber(ARGV[3]))
if #entries == 0 then return 0 end
local function key_of(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function after(ms, seq, ms2, seq2)
  return ms > ms2 or (ms == ms2 and seq > seq2)
end
local last = entries[#entries][1]
local last_ms, last_seq = key_of(last)
local tasks = {}
for _, entry in ipairs(entries) do
  local fields, task = entry[2], nil
  if fields[3] == 't' then
    task = fields[4]
  else
    for j = 1, #fields, 2 do
      if fields[j] == 't' then task = fields[j + 1] end
    end
  end
  if task then tasks[task] = (tasks[task] or 0) + 1 end
end
local state = redis.call('HMGET', dedup, 'g', 'o')
local o_ms, o_seq = key_of(state[2] or '0-0')
if after(last_ms, last_seq, o_ms, o_seq) then  -- some of the ids may be remembered
  local gen = tonumber(state[1] or '0')
  local current, previous = dedup .. ':' .. gen .. ':', dedup .. ':' .. (gen - 1) .. ':'
  for _, entry in ipairs(entries) do
    local ms, seq = key_of(entry[1])
    local fields = entry[2]
    if after(ms, seq, o_ms, o_seq) and fields[1] == 'e' then
      local ok, event = pcall(cjson.decode, fields[2])
      if ok and type(event) == 'table' and type(event.event_id) == 'string' then
        local id = dedup_id(event.event_id)
        local b = bucket(id)
        redis.call('HDEL', current .. b, id)
        redis.call('HDEL', previous .. b, id)
      end
    end
  end
end
-- A task's list holds its ids in id order, and its ids older than this chunk are gone
-- already: pop as many as the chunk holds of the task (an emptied list is gone), and put
-- back any after the chunk's last id. (Ids of entries that MAXLEN trimmed stay at the
-- head of their list until it expires: task_history skips them.)
for task, count in pairs(tasks) do
  local key = prefix .. task
  local popped = redis.call('LPOP', key, count)
  if popped then
    local back = {}
    for i = #popped, 1, -1 do
      local ms, seq = key_of(popped[i])
      if ms < last_ms or (ms == last_ms and seq <= last_seq) then break end
      back[#back + 1] = popped[i]
    end
    if #back > 0 then redis.call('LPUSH', key, unpack(back)) end
  end
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

# KEYS: the group's live members (a sorted set: member -> lease end in ms), its leases (a
# hash: partition -> "<lease end> <member>") and where its members run (a hash: member ->
# "<host> <pid>"). ARGV: the member, the lease (ms), the number of partitions, the mode,
# where the member runs, then the members known dead (their process on this host is gone).
#
# * ``claim``: the member (re)joins; the dead members, and those whose lease ended, are
#   dropped. The live members, sorted by name, divide the partitions (partition ``p`` goes
#   to member number ``p % n``). The member renews the leases of the partitions it should
#   hold, gives up the others, and takes those it should hold that are free (never leased,
#   released, or their holder died: its lease ended, or it is known dead).
# * ``renew``: the member renews its own lease and those of every partition it holds.
# * ``release``: the member leaves and frees its partitions.
#
# Returns the partitions the member holds, and those of them it took just now.
LEASE_SCRIPT = """
local members, leases, hosts = KEYS[1], KEYS[2], KEYS[3]
local me, lease, count, mode = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ends = string.format('%d %s', now + lease, me)
local dead = {}
for i = 6, #ARGV do
  dead[ARGV[i]] = true
  redis.call('ZREM', members, ARGV[i])
  redis.call('HDEL', hosts, ARGV[i])
end
if mode == 'release' then
  redis.call('ZREM', members, me)
  redis.call('HDEL', hosts, me)
else
  redis.call('ZADD', members, now + lease, me)
  redis.call('HSET', hosts, me, ARGV[5])
end
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', members, '-inf', now)) do
  redis.call('HDEL', hosts, gone)
end
redis.call('ZREMRANGEBYSCORE', members, '-inf', now)
local live = redis.call('ZRANGE', members, 0, -1)
table.sort(live)
local rank, n = -1, #live
for i, name in ipairs(live) do
  if name == me then rank = i - 1 end
end
local held, taken = {}, {}
for p = 0, count - 1 do
  local lease_of = redis.call('HGET', leases, p)
  local until_ms, holder = 0, nil
  if lease_of then
    local u, h = string.match(lease_of, '^(%d+) (.*)$')
    until_ms, holder = tonumber(u), h
  end
  local mine = rank >= 0 and p % n == rank
  if holder == me then
    if mode == 'renew' or (mode == 'claim' and mine) then
      redis.call('HSET', leases, p, ends)
      held[#held + 1] = p
    else
      redis.call('HDEL', leases, p)
    end
  elseif mode == 'claim' and mine and (holder == nil or until_ms <= now or dead[holder]) then
    redis.call('HSET', leases, p, ends)
    held[#held + 1] = p
    taken[#taken + 1] = p
  end
end
return {held, taken}
"""
