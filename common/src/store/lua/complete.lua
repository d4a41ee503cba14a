-- ARGV: P, trial, attempt, epoch, outcome (succeeded | failed | failed_retryable | cancelled),
-- max_attempts. Returns the new state, or an error status ("unknown", "illegal:<state>",
-- "stale:<attempt>:<epoch>").
local k, outcome = ARGV[2], ARGV[5]
local refusal = fenced(k, ARGV[3], ARGV[4])
if refusal then return {err = refusal} end
if outcome == 'succeeded' then settle(k, 'succeeded') return 'succeeded' end
if outcome == 'failed' then settle(k, 'failed') return 'failed' end
if outcome == 'failed_retryable' then return requeue_or_dead(k, ARGV[6]) end
if outcome == 'cancelled' then
  if redis.call('HGET', tkey(k), 'c') ~= '1' then return {err = 'illegal:leased'} end
  settle(k, 'cancelled')
  return 'cancelled'
end
return {err = 'illegal:unknown outcome ' .. outcome}
