-- ARGV: P, sweep, priority, then (trial, cost, payload) triples. Returns trials added.
local sweep, priority = ARGV[2], ARGV[3]
if not redis.call('ZSCORE', P .. ':sweeps', sweep) then
  -- A new sweep starts level with the least-served active sweep, not with a backlog of credit.
  local start = nil
  local all = redis.call('ZRANGE', P .. ':sweeps', 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    if redis.call('ZCARD', P .. ':ready:' .. all[i]) > 0 then
      local v = tonumber(all[i + 1])
      if start == nil or v < start then start = v end
    end
  end
  redis.call('ZADD', P .. ':sweeps', start or 0, sweep)
  redis.call('HSET', P .. ':prio', sweep, priority)
end
local added = 0
for i = 4, #ARGV, 3 do
  local k, cost, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local t = tkey(k)
  local st = redis.call('HGET', t, 'st')
  if not st then
    redis.call('HSET', t, 's', sweep, 'st', 'queued', 'a', 0, 'e', 0, 'c', 0, 'cost', cost, 'p', payload)
    redis.call('SADD', P .. ':members:' .. sweep, k)
    push_ready(k)
    added = added + 1
  elseif st ~= 'queued' and st ~= 'leased' then
    redis.call('SREM', P .. ':members:' .. redis.call('HGET', t, 's'), k)
    redis.call('HSET', t, 's', sweep, 'cost', cost, 'p', payload)
    redis.call('SADD', P .. ':members:' .. sweep, k)
    retry(k)
    added = added + 1
  end
end
return added
