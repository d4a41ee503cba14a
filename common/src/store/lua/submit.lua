-- ARGV: P, sweep, priority, name, force (0/1), plan (JSON, stored when not empty), then
-- (trial, cost, payload, class, memory MiB, cores, seat features) septets.
-- Returns {added, reused}: trials queued, and trials whose result already exists (or that
-- another sweep is running now) and are shared instead of run again.
local sweep, priority, name, force, plan = ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1', ARGV[6]
local sw = P .. ':sw:' .. sweep
if redis.call('EXISTS', sw) == 0 then
  redis.call('HSET', sw, 'prio', priority, 'name', name, 'sub', now_ms(), 'reused', 0, 'dsum', 0, 'dn', 0)
  redis.call('ZADD', P .. ':all', now_ms(), sweep)
  emit('submitted', '', sweep, '', '', name)
end
if plan ~= '' then redis.call('HSET', sw, 'plan', plan) end
local added, reused = 0, 0
for i = 7, #ARGV, 7 do
  local k = ARGV[i]
  local t = tkey(k)
  local st = redis.call('HGET', t, 'st')
  local fresh = {'cost', ARGV[i + 1], 'p', ARGV[i + 2], 'cls', ARGV[i + 3], 'mem', ARGV[i + 4],
    'cpu', ARGV[i + 5], 'seat', ARGV[i + 6]}
  if not st then
    redis.call('HSET', t, 's', sweep, 'a', 0, 'e', 0, 'c', 0, 'hs', 0, 'nb', 0, unpack(fresh))
    redis.call('SADD', P .. ':members:' .. sweep, k)
    set_state(k, 'queued')
    push_ready(k)
    added = added + 1
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
    redis.call('HSET', t, unpack(fresh))
    retry(k)
    added = added + 1
  end
end
if reused > 0 then redis.call('HINCRBY', sw, 'reused', reused) end
if unfinished(sweep) == 0 and not redis.call('ZSCORE', P .. ':sweeps', sweep) then
  redis.call('ZADD', P .. ':finished', 0, sweep)
end
return {added, reused}
