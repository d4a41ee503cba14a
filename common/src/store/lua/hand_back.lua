-- ARGV: P, trial, attempt, epoch. Queues a leased trial again unrun: the attempt is refunded
-- and the epoch bumped, so the old fence never matches again. Returns the new state.
local k = ARGV[2]
local refusal = fenced(k, ARGV[3], ARGV[4])
if refusal then return {err = refusal} end
local t = tkey(k)
if redis.call('HGET', t, 'c') == '1' then settle(k, 'cancelled') return 'cancelled' end
local a = tonumber(redis.call('HGET', t, 'a'))
if a > 0 then a = a - 1 end
settle(k, 'queued')
redis.call('HSET', t, 'a', a)
redis.call('HINCRBY', t, 'e', 1)
push_ready(k)
return 'queued'
