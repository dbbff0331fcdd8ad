"""The Redis store's steps as one Lua script: each call runs atomically on the server.

The rules are ``relay.store.policy``'s, line for line (the contract tests run
both stores). Keys (``relay:`` then):

=====================  ======  ====================================================
``lease``              hash    identity key -> ``"PORT GRANTED LAST_USED"``
``port``               hash    port -> identity key (the lease on it)
``used``               zset    identity key, scored by its last use (expiry)
``names``              set     keys of unauthenticated names (``--max-name-leases``)
``claims:HOLDER``      hash    port -> ``"TOKEN KEY"`` (KEY empty: anonymous)
``owners:PORT``        hash    holder -> identity key ("" anonymous): who has it open
``held:KEY``           hash    holder -> port: where the identity is open
``member:HOLDER``      string  the holder's description; expires after the member TTL
``members``            set     holders that may have claims (to clear lapsed ones)
=====================  ======  ====================================================

A holder whose ``member:`` key has expired is dead: whichever step meets its
claims first clears them (its leases stay). The keys a step touches depend on
the data, so this needs one Redis (or a primary behind Sentinel), not Redis
Cluster.
"""

from __future__ import annotations

PREFIX = "relay:"

SCRIPT = r"""
local P = 'relay:'
local op, ME = ARGV[1], ARGV[2]

local function split(s)
  local out = {}
  for word in string.gmatch(s, '%S+') do out[#out + 1] = word end
  return out
end

local function live(h)
  return h == ME or redis.call('EXISTS', P .. 'member:' .. h) == 1
end

local function drop_holder(h)
  local claims = redis.call('HGETALL', P .. 'claims:' .. h)
  for i = 1, #claims, 2 do
    local key = split(claims[i + 1])[2]
    redis.call('HDEL', P .. 'owners:' .. claims[i], h)
    if key then redis.call('HDEL', P .. 'held:' .. key, h) end
  end
  redis.call('DEL', P .. 'claims:' .. h)
  redis.call('SREM', P .. 'members', h)
end

local function owners(port)
  local all = redis.call('HGETALL', P .. 'owners:' .. port)
  local out = {}
  for i = 1, #all, 2 do
    if live(all[i]) then out[#out + 1] = {all[i], all[i + 1]} else drop_holder(all[i]) end
  end
  return out
end

local function held_at(key)
  local all = redis.call('HGETALL', P .. 'held:' .. key)
  local out = {}
  for i = 1, #all, 2 do
    if live(all[i]) then out[all[i + 1]] = true else drop_holder(all[i]) end
  end
  return out
end

local function lease_of(key)
  local v = redis.call('HGET', P .. 'lease', key)
  if not v then return nil end
  local f = split(v)
  return {port = f[1], granted = f[2], used = f[3]}
end

local function set_lease(key, port, granted, used)
  local old = lease_of(key)
  if old and redis.call('HGET', P .. 'port', old.port) == key then
    redis.call('HDEL', P .. 'port', old.port)
  end
  redis.call('HSET', P .. 'lease', key, port .. ' ' .. granted .. ' ' .. used)
  redis.call('HSET', P .. 'port', port, key)
  redis.call('ZADD', P .. 'used', used, key)
  if string.sub(key, 1, 5) == 'name:' then redis.call('SADD', P .. 'names', key) end
end

local function del_lease(key)
  local old = lease_of(key)
  if not old then return end
  if redis.call('HGET', P .. 'port', old.port) == key then
    redis.call('HDEL', P .. 'port', old.port)
  end
  redis.call('HDEL', P .. 'lease', key)
  redis.call('ZREM', P .. 'used', key)
  redis.call('SREM', P .. 'names', key)
end

local function touch(key, now)
  local l = lease_of(key)
  if l then redis.call('HSET', P .. 'lease', key, l.port .. ' ' .. l.granted .. ' ' .. now)
    redis.call('ZADD', P .. 'used', now, key) end
end

local function expire(now, ttl)
  local out = {}
  local stale = redis.call('ZRANGEBYSCORE', P .. 'used', '-inf', '(' .. (now - ttl),
    'LIMIT', 0, 100)
  for _, key in ipairs(stale) do
    if next(held_at(key)) == nil then
      local l = lease_of(key)
      del_lease(key)
      out[#out + 1] = key .. ' ' .. (l and l.port or '?')
    end
  end
  return out
end

local function claim(port, key, token)
  redis.call('HSET', P .. 'claims:' .. ME, port, token .. ' ' .. key)
  redis.call('HSET', P .. 'owners:' .. port, ME, key)
  if key ~= '' then redis.call('HSET', P .. 'held:' .. key, ME, port) end
  redis.call('SADD', P .. 'members', ME)
end

local function unclaim(port, token)
  local v = redis.call('HGET', P .. 'claims:' .. ME, port)
  if not v then return nil end
  local f = split(v)
  if f[1] ~= token then return nil end
  local key = f[2] or ''
  redis.call('HDEL', P .. 'claims:' .. ME, port)
  redis.call('HDEL', P .. 'owners:' .. port, ME)
  if key ~= '' and redis.call('HGET', P .. 'held:' .. key, ME) == port then
    redis.call('HDEL', P .. 'held:' .. key, ME)
  end
  return key
end

local function decide(key, token, port, offered, ranges, exclude, after, counted, max_names, now)
  local lease = nil
  if key ~= '' then lease = lease_of(key) end
  if counted == '1' and not lease then
    local names = redis.call('SCARD', P .. 'names')
    if names >= tonumber(max_names) then return {'denied', 'names', '', names} end
  end
  local function taken(p)
    for _, o in ipairs(owners(p)) do
      if o[2] ~= key or key == '' or o[1] == ME then return true end
    end
    return false
  end
  local function grant(p, how)
    claim(p, key, token)
    if key ~= '' then
      local granted = now
      if lease and lease.port == p then granted = lease.granted end
      set_lease(key, p, granted, now)
    end
    return {'claimed', p, how}
  end
  local function elsewhere(p)
    if key == '' then return nil end
    local best = nil
    for q in pairs(held_at(key)) do
      if q ~= p and (not best or tonumber(q) < tonumber(best)) then best = q end
    end
    return best
  end
  if port ~= '' then
    local other = redis.call('HGET', P .. 'port', port)
    if other and other ~= key then
      if offered == '1' or #owners(port) == 0 then return {'denied', 'reserved', port, 0} end
      return {'denied', 'in use by a client', port, 0}
    end
    if taken(port) then return {'denied', 'in use', port, 0} end
    local held = elsewhere(port)
    if held then return {'denied', 'elsewhere', held, 0} end
    if offered == '1' then return grant(port, 'offered') end
    return grant(port, 'requested')
  end
  local excluded = {}
  for _, p in ipairs(split(exclude)) do excluded[p] = true end
  local bounds = {}
  if ranges ~= 'any' then bounds = split(ranges) end
  if lease then
    local allowed = ranges == 'any'
    local lp = tonumber(lease.port)
    for i = 1, #bounds, 2 do
      if lp >= tonumber(bounds[i]) and lp <= tonumber(bounds[i + 1]) then allowed = true end
    end
    if allowed and not excluded[lease.port] and not taken(lease.port) then
      return grant(lease.port, 'leased')
    end
    if next(held_at(key)) ~= nil then return {'denied', 'elsewhere', lease.port, 0} end
  end
  if ranges == 'any' then return {'offer'} end
  local ports = {}
  for i = 1, #bounds, 2 do
    for p = tonumber(bounds[i]), tonumber(bounds[i + 1]) do ports[#ports + 1] = p end
  end
  local start = 1
  for i, p in ipairs(ports) do
    if p > tonumber(after) then start = i break end
  end
  local reserved = 0
  for n = 0, #ports - 1 do
    local p = tostring(ports[(start - 1 + n) % #ports + 1])
    if not excluded[p] and #owners(p) == 0 then
      if redis.call('HEXISTS', P .. 'port', p) == 1 then
        reserved = reserved + 1
      else
        return grant(p, 'free')
      end
    end
  end
  return {'denied', 'no port', '', reserved}
end

local function sweep()
  for _, h in ipairs(redis.call('SMEMBERS', P .. 'members')) do
    if not live(h) then drop_holder(h) end
  end
end

if op == 'allocate' then
  local now, ttl = ARGV[3], tonumber(ARGV[4])
  local expired = expire(tonumber(now), ttl)
  local key = ARGV[5]
  local prev = {}
  if key ~= '' then
    local l = lease_of(key)
    if l then prev = {l.port, l.granted, l.used} end
  end
  local out = decide(key, ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12],
    ARGV[13], now)
  return {out, prev, expired}
elseif op == 'abandon' then
  local key, token, port, how = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
  unclaim(port, token)
  if key == '' or how == 'leased' then return 0 end
  local l = lease_of(key)
  if not l or l.port ~= port or held_at(key)[port] then return 0 end
  del_lease(key)
  if ARGV[7] ~= '' and redis.call('HEXISTS', P .. 'port', ARGV[7]) == 0 then
    set_lease(key, ARGV[7], ARGV[8], ARGV[9])
  end
  return 1
elseif op == 'release' then
  local key = unclaim(ARGV[3], ARGV[4])
  if key and key ~= '' then
    local l = lease_of(key)
    if l and l.port == ARGV[3] then touch(key, ARGV[5]) end
  end
  return 0
elseif op == 'heartbeat' then
  local existed = redis.call('SET', P .. 'member:' .. ME, ARGV[3], 'PX', ARGV[4], 'GET')
  if existed then return 1 end
  drop_holder(ME)
  redis.call('SADD', P .. 'members', ME)
  return 0
elseif op == 'sync' then
  local now, ttl = ARGV[3], tonumber(ARGV[4])
  redis.call('SET', P .. 'member:' .. ME, ARGV[5], 'PX', ARGV[6])
  redis.call('SADD', P .. 'members', ME)
  sweep()
  local wanted = {}
  for i = 7, #ARGV, 3 do wanted[ARGV[i] .. ' ' .. ARGV[i + 1]] = true end
  local mine = redis.call('HGETALL', P .. 'claims:' .. ME)
  local have = {}
  for i = 1, #mine, 2 do
    local token = split(mine[i + 1])[1]
    if wanted[mine[i] .. ' ' .. token] then have[mine[i]] = true
    else unclaim(mine[i], token) end
  end
  local lost = {}
  for i = 7, #ARGV, 3 do
    local port, token, key = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if not have[port] then
      local out = decide(key, token, port, '1', 'any', '', '0', '0', '0', now)
      if out[1] ~= 'claimed' then lost[#lost + 1] = port end
    end
    if key ~= '' then touch(key, now) end
  end
  expire(tonumber(now), ttl)
  return lost
elseif op == 'leave' then
  local mine = redis.call('HGETALL', P .. 'claims:' .. ME)
  for i = 1, #mine, 2 do
    local key = split(mine[i + 1])[2]
    if key then touch(key, ARGV[3]) end
  end
  drop_holder(ME)
  redis.call('DEL', P .. 'member:' .. ME)
  return 0
end
return redis.error_reply('unknown step ' .. tostring(op))
"""
