-- ARGV: P, trial, attempt, epoch, outcome (succeeded | failed | failed_retryable | cancelled |
-- refused), max_attempts, retry backoff ms, result summary (JSON or ''), result prefix in the
-- store (or ''), seconds the attempt ran, memory to reserve from now on (MiB; 0 keeps it; it
-- only grows), max licence refusals, licence backoff ms, seat hold ms, the refused feature
-- ('' for every seat feature of the trial), and ms during which the reporting worker is not
-- to lease the trial again (0: none; an infrastructure failure: its disk, network or store,
-- so another worker should try). Returns the new state, or an error status
-- ("unknown", "illegal:<state>", "stale:<attempt>:<epoch>"): a refused report changes nothing.
--
-- refused (the licence server had no seat): the attempt is refunded under a new epoch after a
-- wait that doubles per refusal, up to max refusals (then it is failed_retryable with that
-- wait); the feature's seats are held at the count still in use for the hold time.
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
local avoid_ms = tonumber(ARGV[16] or '0')
if avoid_ms > 0 and worker then redis.call('HSET', t, 'xw', worker, 'xu', now_ms() + avoid_ms) end
local memory = tonumber(ARGV[11] or '0')
if memory > tonumber(redis.call('HGET', t, 'mem') or '0') then redis.call('HSET', t, 'mem', memory) end
local state
if outcome == 'refused' then
  local features = split(redis.call('HGET', t, 'seat'))
  if ARGV[15] ~= nil and ARGV[15] ~= '' then features = {ARGV[15]} end
  local lr = tonumber(redis.call('HGET', t, 'lr') or '0')
  if redis.call('HGET', t, 'c') == '1' then
    settle(k, 'cancelled')
    state = 'cancelled'
  elseif lr < tonumber(ARGV[12]) then
    lr = lr + 1
    local a = tonumber(redis.call('HGET', t, 'a') or '0')
    if a > 0 then a = a - 1 end
    settle(k, 'queued')
    redis.call('HSET', t, 'a', a, 'lr', lr, 'nb', now_ms() + refusal_wait(ARGV[13], lr))
    redis.call('HINCRBY', t, 'e', 1)
    push_ready(k)
    state = 'queued'
  else
    state = requeue_or_dead(k, ARGV[6], refusal_wait(ARGV[13], lr))
  end
  local until_ms = now_ms() + tonumber(ARGV[14])
  for _, feature in ipairs(features) do
    local held = tonumber(redis.call('HGET', P .. ':seats', feature) or '0')
    redis.call('HSET', P .. ':hold', feature, held .. ':' .. until_ms)
  end
elseif outcome == 'succeeded' then settle(k, 'succeeded') state = 'succeeded'
elseif outcome == 'failed' then settle(k, 'failed') state = 'failed'
elseif outcome == 'failed_retryable' then state = requeue_or_dead(k, ARGV[6], ARGV[7])
elseif outcome == 'cancelled' then
  if redis.call('HGET', t, 'c') ~= '1' then return {err = 'illegal:leased'} end
  settle(k, 'cancelled')
  state = 'cancelled'
else
  return {err = 'illegal:unknown outcome ' .. outcome}
end
if outcome == 'failed' or outcome == 'failed_retryable' or outcome == 'refused' then
  redis.call('LPUSH', P .. ':failures', k)
  redis.call('LTRIM', P .. ':failures', 0, 49)
end
emit('completed', k, sweep, state, worker, outcome)
return state
