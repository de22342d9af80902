"""The Lua scripts of the Redis store: each multi-key update is one atomic step in Redis.

A script runs alone in Redis, so what it reads and writes is never seen half done by
another node; redis-py sends each by its SHA1 and loads it again when a restarted Redis
no longer knows it.  Numbers that must stay exact (ids, times) travel as decimal strings
and are never turned into text by Lua itself (Lua 5.1 prints only 14 digits).

Counters that a wiped Redis would restart (event ids, feed positions) start from the
server's clock in microseconds, so a Redis that comes back empty never hands out an id or
position that was used before it lost its data.
"""

from __future__ import annotations

_REPLICATE = "if redis.replicate_commands then redis.replicate_commands() end\n"

_CLOCK_START = """
local function clock_start(key, floor)
  if redis.call('EXISTS', key) == 0 then
    local t = redis.call('TIME')
    local start = t[1] .. string.format('%06d', tonumber(t[2]))
    if floor and tonumber(floor) >= tonumber(start) then
      start = string.format('%d', tonumber(floor) + 1)
    end
    redis.call('SET', key, start)
    return start
  end
  return nil
end
"""

LAYOUT = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""

# KEYS: revisions, order, order counter; ARGV: id, record JSON
PUT_REVISION = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then
  redis.call('HSET', KEYS[2], ARGV[1], redis.call('INCR', KEYS[3]))
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
"""

DELETE_REVISION = """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
"""

LIST_REVISIONS = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"""

# KEYS: counter, bodies, ids, ids of the kind; ARGV: body JSON
ADD_EVENT = _REPLICATE + _CLOCK_START + """
clock_start(KEYS[1], nil)
local id = string.format('%d', redis.call('INCR', KEYS[1]))
redis.call('HSET', KEYS[2], id, ARGV[1])
redis.call('ZADD', KEYS[3], id, id)
redis.call('ZADD', KEYS[4], id, id)
return id
"""

# KEYS: ids (of a kind, or all), bodies; ARGV: 'tail' or 'after', after id, limit
READ_EVENTS = """
local ids
if ARGV[1] == 'tail' then
  ids = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', '-inf', 'LIMIT', 0, ARGV[3])
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf', 'LIMIT', 0, ARGV[3])
end
if #ids == 0 then return {{}, {}} end
return {ids, redis.call('HMGET', KEYS[2], unpack(ids))}
"""

# KEYS: ids, bodies; ARGV: keep, key prefix of the per-kind id sets
PRUNE_EVENTS = """
local n = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if n <= 0 then return 0 end
local ids = redis.call('ZRANGE', KEYS[1], 0, n - 1)
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZREM', ARGV[2] .. cjson.decode(body)[2], id)
  end
end
for i = 1, #ids, 1000 do
  redis.call('HDEL', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - 1)
return n
"""

# KEYS: expiries, infos; ARGV: node, ttl seconds, info JSON
HEARTBEAT = _REPLICATE + """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], string.format('%.6f', expiry), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
"""

# KEYS: expiries, infos; returns name, seconds left, info JSON for each live node.
# The heartbeats still live by Redis's clock (scores above ``now``):
_LIVE_AFTER_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function live_nodes()
  local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.6f', now), '+inf',
                          'WITHSCORES')
  local out = {}
  for i = 1, #live, 2 do
    out[#out + 1] = live[i]
    out[#out + 1] = string.format('%.6f', tonumber(live[i + 1]) - now)
    out[#out + 1] = redis.call('HGET', KEYS[2], live[i]) or '{}'
  end
  return out
end
"""

# Writing nothing: expired heartbeats are left for a node to prune (``holdover check
# --store``).
LIVE_NODES_READ = _LIVE_AFTER_NOW + "return live_nodes()\n"

# The expired ones removed first (what every node's reading does).
LIVE_NODES = _REPLICATE + _LIVE_AFTER_NOW + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.6f', now))
for i = 1, #dead, 1000 do
  local part = {unpack(dead, i, math.min(i + 999, #dead))}
  redis.call('ZREM', KEYS[1], unpack(part))
  redis.call('HDEL', KEYS[2], unpack(part))
end
return live_nodes()
"""

FORGET_NODE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
"""

# KEYS: stream, counter, start; ARGV: maxlen, ts, node, kind, data JSON
PUBLISH = _REPLICATE + _CLOCK_START + """
local floor = nil
if redis.call('EXISTS', KEYS[2]) == 0 then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #last > 0 then floor = string.match(last[1][1], '^(%d+)') end
  local start = clock_start(KEYS[2], floor)
  redis.call('SET', KEYS[3], start)
end
local seq = string.format('%d', redis.call('INCR', KEYS[2]))
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], seq .. '-0',
           'ts', ARGV[2], 'node', ARGV[3], 'kind', ARGV[4], 'data', ARGV[5])
return seq
"""

# KEYS: stream, counter, start; ARGV: after (0 = the start), limit
# returns {missed (0/1), position, entries}
READ_CHANGES = """
local counter = redis.call('GET', KEYS[2]) or '0'
local after = ARGV[1]
if after == '0' then after = redis.call('GET', KEYS[3]) or '0' end
if tonumber(after) > tonumber(counter) then return {1, counter, {}} end
local count = ARGV[2]
if count == '0' then count = '1' end  -- COUNT 0 would mean no limit
local entries = redis.call('XRANGE', KEYS[1], after .. '-1', '+', 'COUNT', count)
if tonumber(after) < tonumber(counter) and (#entries == 0 or
    string.match(entries[1][1], '^(%d+)') ~= string.format('%d', tonumber(after) + 1)) then
  return {1, counter, {}}
end
if ARGV[2] == '0' then entries = {} end
return {0, after, entries}
"""

# KEYS: pins; ARGV: key, value.  Returns nil when claimed, else the value that holds it.
CLAIM_PIN = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then return nil end
return redis.call('HGET', KEYS[1], ARGV[1])
"""

_BINDING = """
local function binding(value)
  local nl = string.find(value, '\\n', 1, true)
  return nl, cjson.decode(string.sub(value, 1, nl - 1))
end
"""

# KEYS: pins; ARGV: key, incarnation, last_seen, expires_at (4 each).  Returns keys gone.
TOUCH_PINS = _BINDING + """
local gone = {}
for i = 1, #ARGV, 4 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local nl, b
  if cur then nl, b = binding(cur) end
  if not cur or b[2] ~= ARGV[i + 1] then
    gone[#gone + 1] = ARGV[i]
  elseif tonumber(ARGV[i + 2]) >= tonumber(string.match(cur, '^(%S+)', nl + 1)) then
    redis.call('HSET', KEYS[1], ARGV[i],
               string.sub(cur, 1, nl) .. ARGV[i + 2] .. ' ' .. ARGV[i + 3])
  end
end
return gone
"""

# KEYS: pins; ARGV: key, incarnation (2 each).  Returns the keys ended.
END_PINS = _BINDING + """
local ended = {}
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur then
    local _, b = binding(cur)
    if b[2] == ARGV[i + 1] then
      redis.call('HDEL', KEYS[1], ARGV[i])
      ended[#ended + 1] = ARGV[i]
    end
  end
end
return ended
"""

# KEYS: lock; ARGV: owner, ttl in milliseconds.  Returns the holder.
ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if not cur or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return cur
"""

# KEYS: lock; ARGV: owner.  Returns 1 when released.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
