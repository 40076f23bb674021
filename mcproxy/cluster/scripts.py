"""The Lua scripts of cluster coordination (see docs: cluster design §3.3).

Each script is one atomic step, so no two nodes ever see a half-made lease or owner
record. Time comes from Redis ``TIME``, never from a node's clock. Keys (under the
prefix, ``mcproxy:`` by default): ``node:<id>`` (hash, expires: the lease), ``nodes``
(set of ids seen), ``cluster`` (hash; its absence means Redis came up empty),
``owner:<user>`` (hash: node, epoch, fencing token, ...), ``owned:<node>`` (set).
Values come back as strings (the control pool does not convert numbers).
"""

#: Take the lease ``node:<me>`` unless a live process holds that id.
#: KEYS node:<me>, nodes, cluster, gone:<me>. ARGV me, epoch, ttl_ms, url, draining, stats.
#: Returns {1, fresh} (fresh is 1 when the cluster hash was missing), or {0, pttl}
#: when the id is in use: the caller waits, two processes never share an id.
REGISTER = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('PTTL', KEYS[1])} end
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'url', ARGV[4], 'draining', ARGV[5], 'stats', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[4])
return {1, redis.call('HSETNX', KEYS[3], 'born', redis.call('TIME')[1])}
"""

#: Extend my lease if it still carries my epoch; 0 means it expired (and maybe was
#: taken): the node is fenced and must register again with a new epoch.
#: KEYS node:<me>. ARGV epoch, ttl_ms, draining, stats.
RENEW = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'draining', ARGV[3], 'stats', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

#: Give the lease up (graceful stop), only if it is still mine: a process that lost
#: its id to another must not delete the other's lease.
#: KEYS node:<me>, nodes. ARGV me, epoch. Returns 1 when deleted.
UNREGISTER = """
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

#: Become the owner of a user, compare-and-set against what the caller read.
#: KEYS owner:<u>, node:<me>, node:<seen>, owned:<me>, owned:<seen>.
#: ARGV user, me, my_epoch, seen_node ('' if none), seen_epoch, via.
#: Returns {-1} when my lease is gone (never claim then), {0} when the record changed
#: since it was read (read again), {1, node, epoch, token, url} when a live node owns
#: it, {2, me, my_epoch, token} when it is mine. A record naming my own older epoch is
#: taken over, so a re-registered node takes its users back at once.
CLAIM = """
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[3] then return {-1} end
local o = redis.call('HMGET', KEYS[1], 'node', 'epoch', 'token')
local node, epoch, token = o[1] or '', o[2] or '', tonumber(o[3] or '0')
if node == ARGV[2] and epoch == ARGV[3] then return {2, node, epoch, o[3]} end
if node ~= ARGV[4] or epoch ~= ARGV[5] then return {0} end
if node ~= '' and node ~= ARGV[2] then
  local n = redis.call('HMGET', KEYS[3], 'epoch', 'url')
  if n[1] == epoch then return {1, node, epoch, o[3], n[2] or ''} end
end
-- Fencing tokens are time-seeded, so they keep increasing even after Redis lost the
-- owner hash; %.0f because Lua 5.1 would print a large number with an exponent.
-- Microseconds since 1970 are about 1.8e15 < 2^53: exact in a Lua double.
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local new = string.format('%.0f', math.max(token + 1, now_us))
redis.call('HSET', KEYS[1], 'node', ARGV[2], 'epoch', ARGV[3], 'token', new, 'since', t[1], 'via', ARGV[6], 'hint', '')
if node ~= '' then redis.call('SREM', KEYS[5], ARGV[1]) end
redis.call('SADD', KEYS[4], ARGV[1])
return {2, ARGV[2], ARGV[3], new}
"""

#: Let a user go, only if the record still names me with this token. The token stays,
#: so the next claim gets a larger one; ``hint`` names the node expected to claim next.
#: KEYS owner:<u>, owned:<me>. ARGV user, me, epoch, token, hint. Returns 1 if released.
RELEASE = """
local o = redis.call('HMGET', KEYS[1], 'node', 'epoch', 'token')
if o[1] ~= ARGV[2] or o[2] ~= ARGV[3] or o[3] ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], 'node', '', 'epoch', '', 'hint', ARGV[5])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

#: The owner records of some users, each with whether its node's lease carries the
#: record's epoch (the owner is alive) and that node's url: the whole ownership check
#: in one round trip. KEYS owner:<u>, ... ARGV the node key prefix (``<prefix>node:``).
#: Returns one {node, epoch, token, alive, url, hint} per key ('' and '0' when absent).
OWNERS = """
local out = {}
for i, key in ipairs(KEYS) do
  local o = redis.call('HMGET', key, 'node', 'epoch', 'token', 'hint')
  local node, epoch, alive, url = o[1] or '', o[2] or '', 0, ''
  if node ~= '' then
    local n = redis.call('HMGET', ARGV[1] .. node, 'epoch', 'url')
    if n[1] == epoch then alive, url = 1, n[2] or '' end
  end
  out[i] = {node, epoch, o[3] or '0', alive, url, o[4] or ''}
end
return out
"""

#: Every node id in ``nodes`` with its lease: {id, epoch, url, draining, stats, pttl}.
#: A node whose lease expired comes back with epoch '' and pttl -2 (dead), until it has
#: been dead for ``forget_after`` seconds (``gone:<id>`` says since when): then its id is
#: dropped, so ids of processes that never come back (containers) do not pile up.
#: KEYS nodes. ARGV the node key prefix, the gone key prefix, forget_after.
NODES = """
local now = tonumber(redis.call('TIME')[1])
local forget_after = tonumber(ARGV[3])
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. id
  local n = redis.call('HMGET', key, 'epoch', 'url', 'draining', 'stats')
  local pttl = redis.call('PTTL', key)
  local kept = true
  if pttl == -2 then
    local gone = ARGV[2] .. id
    local since = tonumber(redis.call('GET', gone) or '')
    if not since then
      redis.call('SET', gone, now, 'EX', forget_after * 2)
    elseif now - since >= forget_after then
      redis.call('SREM', KEYS[1], id)
      redis.call('DEL', gone)
      kept = false
    end
  end
  if kept then out[#out + 1] = {id, n[1] or '', n[2] or '', n[3] or '0', n[4] or '{}', pttl} end
end
return out
"""
