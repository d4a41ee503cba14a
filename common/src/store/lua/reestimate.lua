-- ARGV: P, then (trial, cost, memory MiB or '') triples: new estimates for queued trials.
-- A queued trial takes the cost (its ready entry is re-scored, so the next lease sees the new
-- order) and, unless it has run before (an earlier attempt's reservation, raised after an
-- out-of-memory failure, stands), the memory. Trials in any other state are left alone.
-- Returns the number of trials re-estimated.
local changed = 0
for i = 2, #ARGV, 3 do
  local k, cost, mem = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local t = tkey(k)
  local f = redis.call('HMGET', t, 'st', 's', 'cls', 'rm', 'a')
  if f[1] == 'queued' and f[4] then
    redis.call('HSET', t, 'cost', cost)
    if mem ~= '' and tonumber(f[5] or '0') == 0 then redis.call('HSET', t, 'mem', mem) end
    redis.call('ZADD', P .. ':ready:' .. f[2] .. ':' .. f[3], 'XX', tonumber(cost), f[4])
    changed = changed + 1
  end
end
return changed
