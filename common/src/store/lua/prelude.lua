-- Shared by every queue script (prepended to each). It mirrors common/src/job/state.rs:
-- states queued, leased, succeeded, failed, cancelled, dead; a lease's fence is the trial's
-- (attempt, epoch); a stale fence changes nothing. Every state change goes through set_state,
-- which keeps the per-sweep counters and the events stream.
--
-- Keys, all under one hash tag so a script touches a single Redis Cluster slot
-- (P = ARGV[1], e.g. "{hlsfarm}"; KEYS[1] is P..":sweeps", for routing):
--   P:t:<trial>        hash (absent numeric fields read as 0): s sweep, st state, a attempt,
--                      e epoch, c cancel requested (0/1),
--                      cost, p payload (JSON), cls class, mem MiB, cpu cores, seat features
--                      (comma list), hs seats held (0/1), nb not-before (ms), lr licence
--                      refusals refunded, xw/xu worker to avoid and until when (ms), w worker,
--                      d lease deadline (ms), t0 lease start (ms), stg stage, ph phase,
--                      r result summary (JSON), res committed result prefix, rm its
--                      member in the ready zset while queued
--   P:ready:<sweep>:<class>  zset: queued trials, score cost, member "<12-digit inverted seq>:<trial>"
--   P:cls:<sweep>      set: classes that have trials in the sweep
--   P:members:<sweep>  set: every trial of the sweep
--   P:n:<sweep>        hash: state -> trials of the sweep in it
--   P:sw:<sweep>       hash: prio, name, sub (submitted ms), plan (JSON), reused, dsum, dn
--   P:sweeps           zset: active sweeps by virtual time (leases granted / priority)
--   P:all              zset: every sweep by submit time (ms)
--   P:leases           zset: leased trials by deadline (ms)
--   P:seats            hash: feature -> seats held
--   P:hold             hash: feature -> "<cap>:<until ms>", seats held down after a licence refusal
--   P:events           stream: what happened (type, trial, sweep, worker, state, msg)
--   P:finished         zset: sweeps whose last trial ended, to aggregate; score = claimable from (ms)
--   P:commits          zset: trials whose result awaits its copy into results/; score likewise
--   P:seq              counter: arrival order of ready entries
--   P:hist             list: what accepted trials cost (estimate::Observation JSON), newest
--                      first, bounded (RedisQueue::push_observation; the scripts never do)
--   P:histn            counter: observations ever pushed (a fit is current while unchanged)
--   P:wake             pub/sub channel, not a key: a coordinator publishes its id there when
--                      work may have appeared (RedisQueue::publish_wake; the scripts never do)
local P = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function tkey(k) return P .. ':t:' .. k end

local function emit(kind, k, sweep, state, worker, msg)
  redis.call('XADD', P .. ':events', 'MAXLEN', '~', 100000, '*',
    'type', kind, 't', k or '', 's', sweep or '', 'st', state or '', 'w', worker or '', 'm', msg or '')
end

local function push_ready(k)
  local t = tkey(k)
  local f = redis.call('HMGET', t, 's', 'cls', 'cost')
  local seq = redis.call('INCR', P .. ':seq')
  local member = string.format('%012d', 999999999999 - seq) .. ':' .. k
  redis.call('ZADD', P .. ':ready:' .. f[1] .. ':' .. f[2], tonumber(f[3]), member)
  redis.call('SADD', P .. ':cls:' .. f[1], f[2])
  redis.call('HSET', t, 'rm', member)
end

-- Puts a sweep back among the active ones, level with the least-served active sweep.
local function activate(sweep)
  if redis.call('ZSCORE', P .. ':sweeps', sweep) then return end
  local least = redis.call('ZRANGE', P .. ':sweeps', 0, 0, 'WITHSCORES')
  redis.call('ZADD', P .. ':sweeps', tonumber(least[2] or '0'), sweep)
  redis.call('ZREM', P .. ':finished', sweep)
end

local function unfinished(sweep)
  local n = redis.call('HMGET', P .. ':n:' .. sweep, 'queued', 'leased')
  return tonumber(n[1] or '0') + tonumber(n[2] or '0')
end

-- Moves a trial to `new`, keeping its sweep's counters; a sweep with nothing left to run
-- leaves the active set and waits for its aggregate.
local function set_state(k, new)
  local t = tkey(k)
  local f = redis.call('HMGET', t, 'st', 's')
  local old, sweep = f[1], f[2]
  if old == new then return end
  local n = P .. ':n:' .. sweep
  if old then redis.call('HINCRBY', n, old, -1) end
  redis.call('HINCRBY', n, new, 1)
  redis.call('HSET', t, 'st', new)
  if new == 'queued' or new == 'leased' then
    activate(sweep)
  elseif unfinished(sweep) == 0 then
    redis.call('ZREM', P .. ':sweeps', sweep)
    redis.call('ZADD', P .. ':finished', 0, sweep)
  end
end

local function split(list)
  local out = {}
  for item in string.gmatch(list or '', '[^,]+') do out[#out + 1] = item end
  return out
end

-- Ends a lease (or a queued wait) in `state`, freeing its seats.
local function settle(k, state)
  local t = tkey(k)
  if redis.call('HGET', t, 'hs') == '1' then
    for _, feature in ipairs(split(redis.call('HGET', t, 'seat'))) do
      redis.call('HINCRBY', P .. ':seats', feature, -1)
    end
  end
  set_state(k, state)
  redis.call('HSET', t, 'c', 0, 'hs', 0)
  redis.call('HDEL', t, 'w', 'd', 't0', 'stg', 'ph')
  redis.call('ZREM', P .. ':leases', k)
end

-- nil when the trial is leased under exactly (attempt, epoch), else the refusal:
-- "unknown", "illegal:<state>" or "stale:<attempt>:<epoch>".
local function fenced(k, attempt, epoch)
  local f = redis.call('HMGET', tkey(k), 'st', 'a', 'e')
  local st = f[1]
  if not st then return 'unknown' end
  if st ~= 'leased' then return 'illegal:' .. st end
  local a, e = tonumber(f[2] or '0'), tonumber(f[3] or '0')
  if a ~= tonumber(attempt) or e ~= tonumber(epoch) then
    return 'stale:' .. a .. ':' .. e
  end
  return nil
end

-- A retryable end of a lease: queue again (not before `backoff_ms` from now) while attempts
-- remain; a cancel order wins. Returns the new state.
local function requeue_or_dead(k, max_attempts, backoff_ms)
  local t = tkey(k)
  if redis.call('HGET', t, 'c') == '1' then settle(k, 'cancelled') return 'cancelled' end
  if tonumber(redis.call('HGET', t, 'a') or '0') >= tonumber(max_attempts) then settle(k, 'dead') return 'dead' end
  settle(k, 'queued')
  redis.call('HSET', t, 'nb', now_ms() + tonumber(backoff_ms or '0'))
  push_ready(k)
  return 'queued'
end

-- The wait after the `n`-th licence refusal: the base doubled per refusal, at most 10 minutes
-- (QueueConfig::refusal_wait).
local function refusal_wait(base_ms, n)
  if n < 1 then n = 1 end
  if n > 17 then n = 17 end
  return math.min(tonumber(base_ms) * 2 ^ (n - 1), 600000)
end

-- Queue a terminal trial again with fresh attempts under a new epoch (the Retry event).
local function retry(k)
  local t = tkey(k)
  set_state(k, 'queued')
  redis.call('HSET', t, 'a', 0, 'c', 0, 'nb', 0, 'lr', 0)
  redis.call('HINCRBY', t, 'e', 1)
  redis.call('HDEL', t, 'w', 'd', 'r', 'res')
  push_ready(k)
end
