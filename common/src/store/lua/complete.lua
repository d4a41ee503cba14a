-- ARGV: P, trial, attempt, epoch, outcome (succeeded | failed | failed_retryable | cancelled),
-- max_attempts, retry backoff ms, result summary (JSON or ''), result prefix in the store (or
-- ''), seconds the attempt ran. Returns the new state, or an error status ("unknown",
-- "illegal:<state>", "stale:<attempt>:<epoch>"): a refused report changes nothing.
local k, outcome = ARGV[2], ARGV[5]
local refusal = fenced(k, ARGV[3], ARGV[4])
if refusal then return {err = refusal} end
local t = tkey(k)
local f = redis.call('HMGET', t, 's', 'w')
local sweep, worker = f[1], f[2]
local summary, prefix, seconds = ARGV[8], ARGV[9], tonumber(ARGV[10] or '0')
if outcome ~= 'cancelled' then
  if summary ~= '' then redis.call('HSET', t, 'r', summary) end
  if prefix ~= '' then
    redis.call('HSET', t, 'res', prefix)
    redis.call('ZADD', P .. ':commits', 0, k)
  end
  redis.call('HINCRBYFLOAT', P .. ':sw:' .. sweep, 'dsum', seconds)
  redis.call('HINCRBY', P .. ':sw:' .. sweep, 'dn', 1)
end
local state
if outcome == 'succeeded' then settle(k, 'succeeded') state = 'succeeded'
elseif outcome == 'failed' then settle(k, 'failed') state = 'failed'
elseif outcome == 'failed_retryable' then state = requeue_or_dead(k, ARGV[6], ARGV[7])
elseif outcome == 'cancelled' then
  if redis.call('HGET', t, 'c') ~= '1' then return {err = 'illegal:leased'} end
  settle(k, 'cancelled')
  state = 'cancelled'
else
  return {err = 'illegal:unknown outcome ' .. outcome}
end
if outcome == 'failed' or outcome == 'failed_retryable' then
  redis.call('LPUSH', P .. ':failures', k)
  redis.call('LTRIM', P .. ':failures', 0, 49)
end
emit('completed', k, sweep, state, worker, outcome)
return state
