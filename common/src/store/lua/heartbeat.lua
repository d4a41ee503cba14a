-- ARGV: P, worker, lease_ms, then (trial, attempt, epoch, stage, phase) quintuples.
-- Returns "d:0"/"d:1" (drain asked) first, "r:0"/"r:1" (the worker is registered) second,
-- then "e:<trial>" (extended), "s:<trial>" (stale) or "c:<trial>" (cancel) per trial.
local worker, lease_ms = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local deadline = now + lease_ms
local out = {'d:' .. redis.call('SISMEMBER', P .. ':drain', worker),
             'r:' .. redis.call('HEXISTS', P .. ':workers', worker)}
for i = 4, #ARGV, 5 do
  local k, stage, phase = ARGV[i], ARGV[i + 3], ARGV[i + 4]
  local t = tkey(k)
  if fenced(k, ARGV[i + 1], ARGV[i + 2]) == nil and redis.call('HGET', t, 'w') == worker then
    redis.call('HSET', t, 'd', deadline)
    redis.call('ZADD', P .. ':leases', deadline, k)
    if stage ~= '' and redis.call('HGET', t, 'stg') ~= stage then
      redis.call('HSET', t, 'stg', stage)
      emit('stage', k, redis.call('HGET', t, 's'), 'leased', worker, stage)
    end
    if phase ~= '' then redis.call('HSET', t, 'ph', phase) end
    if redis.call('HGET', t, 'c') == '1' then out[#out + 1] = 'c:' .. k else out[#out + 1] = 'e:' .. k end
  else
    out[#out + 1] = 's:' .. k
  end
end
redis.call('ZADD', P .. ':wseen', now, worker)
return out
