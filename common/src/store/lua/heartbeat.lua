-- ARGV: P, worker, lease_ms, then (trial, attempt, epoch) triples.
-- Returns "e:<trial>" (extended), "s:<trial>" (stale) or "c:<trial>" (cancel) per trial.
local worker, lease_ms = ARGV[2], tonumber(ARGV[3])
local deadline = now_ms() + lease_ms
local out = {}
for i = 4, #ARGV, 3 do
  local k = ARGV[i]
  local t = tkey(k)
  if fenced(k, ARGV[i + 1], ARGV[i + 2]) == nil and redis.call('HGET', t, 'w') == worker then
    redis.call('HSET', t, 'd', deadline)
    redis.call('ZADD', P .. ':leases', deadline, k)
    if redis.call('HGET', t, 'c') == '1' then out[#out + 1] = 'c:' .. k else out[#out + 1] = 'e:' .. k end
  else
    out[#out + 1] = 's:' .. k
  end
end
return out
