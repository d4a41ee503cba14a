-- ARGV: P, trial, attempt, epoch, reason. Queues a leased trial again unrun: the attempt is
-- refunded and the epoch bumped, so the old fence never matches again. Returns the new state.
local k = ARGV[2]
local refusal = fenced(k, ARGV[3], ARGV[4])
if refusal then return {err = refusal} end
local t = tkey(k)
local f = redis.call('HMGET', t, 's', 'w', 'a')
if redis.call('HGET', t, 'c') == '1' then
  settle(k, 'cancelled')
  emit('completed', k, f[1], 'cancelled', f[2], 'handed back after a cancel')
  return 'cancelled'
end
local a = tonumber(f[3] or '0')
if a > 0 then a = a - 1 end
settle(k, 'queued')
redis.call('HSET', t, 'a', a)
redis.call('HINCRBY', t, 'e', 1)
push_ready(k)
emit('handed_back', k, f[1], 'queued', f[2], ARGV[5] or '')
return 'queued'
