-- ARGV: P, sweep, priority, name, force (0/1), plan (JSON, stored when not empty), then
-- (trial, cost, payload, class, memory MiB, cores, seat features) septets.
-- Returns {added, reused}: trials queued, and trials whose result already exists (or that
-- another sweep is running now) and are shared instead of run again.
-- New trials take a fast path (their commands batched per call); trials seen before go
-- through the state machine's helpers.
local sweep, priority, name, force, plan = ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1', ARGV[6]
local sw = P .. ':sw:' .. sweep
if redis.call('EXISTS', sw) == 0 then
  redis.call('HSET', sw, 'prio', priority, 'name', name, 'sub', now_ms(), 'reused', 0, 'dsum', 0, 'dn', 0)
  redis.call('ZADD', P .. ':all', now_ms(), sweep)
  emit('submitted', '', sweep, '', '', name)
end
if plan ~= '' then redis.call('HSET', sw, 'plan', plan) end
local added, reused = 0, 0
local fresh = {}
for i = 7, #ARGV, 7 do
  local k = ARGV[i]
  local t = tkey(k)
  local st = redis.call('HGET', t, 'st')
  if not st then
    fresh[#fresh + 1] = i
  elseif st == 'queued' or st == 'leased' or (st == 'succeeded' and not force) then
    if redis.call('HGET', t, 's') ~= sweep and redis.call('SADD', P .. ':reused:' .. sweep, k) == 1 then
      reused = reused + 1
    end
  else
    -- Finished without a usable result (or forced): it runs again, in this sweep.
    local old = redis.call('HGET', t, 's')
    if old ~= sweep then
      redis.call('HINCRBY', P .. ':n:' .. old, st, -1)
      redis.call('SREM', P .. ':members:' .. old, k)
      redis.call('HSET', t, 's', sweep)
      redis.call('HINCRBY', P .. ':n:' .. sweep, st, 1)
      redis.call('SADD', P .. ':members:' .. sweep, k)
    end
    redis.call('HSET', t, 'cost', ARGV[i + 1], 'p', ARGV[i + 2], 'cls', ARGV[i + 3], 'mem', ARGV[i + 4],
      'cpu', ARGV[i + 5], 'seat', ARGV[i + 6])
    retry(k)
    added = added + 1
  end
end
if #fresh > 0 then
  -- Arrival order: one block of sequence numbers for the whole batch.
  local last = redis.call('INCRBY', P .. ':seq', #fresh)
  local first = last - #fresh + 1
  local ready, members = {}, {}
  for j, i in ipairs(fresh) do
    local k, cls = ARGV[i], ARGV[i + 3]
    local member = string.format('%012d', 999999999999 - (first + j - 1)) .. ':' .. k
    -- Attempt, epoch and the flags start absent (read as 0).
    redis.call('HSET', tkey(k), 's', sweep, 'st', 'queued',
      'cost', ARGV[i + 1], 'p', ARGV[i + 2], 'cls', cls, 'mem', ARGV[i + 4], 'cpu', ARGV[i + 5],
      'seat', ARGV[i + 6], 'rm', member)
    ready[cls] = ready[cls] or {}
    local r = ready[cls]
    r[#r + 1] = tonumber(ARGV[i + 1])
    r[#r + 1] = member
    members[#members + 1] = k
  end
  for cls, pairs_ in pairs(ready) do
    redis.call('ZADD', P .. ':ready:' .. sweep .. ':' .. cls, unpack(pairs_))
    redis.call('SADD', P .. ':cls:' .. sweep, cls)
  end
  redis.call('SADD', P .. ':members:' .. sweep, unpack(members))
  redis.call('HINCRBY', P .. ':n:' .. sweep, 'queued', #fresh)
  activate(sweep)
  added = added + #fresh
end
if reused > 0 then redis.call('HINCRBY', sw, 'reused', reused) end
if unfinished(sweep) == 0 and not redis.call('ZSCORE', P .. ':sweeps', sweep) then
  redis.call('ZADD', P .. ':finished', 0, sweep)
end
return {added, reused}
