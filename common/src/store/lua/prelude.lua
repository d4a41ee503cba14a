-- Shared by every queue script (prepended to each). It mirrors common/src/job/state.rs:
-- states queued, leased, succeeded, failed, cancelled, dead; a lease's fence is the trial's
-- (attempt, epoch); a stale fence changes nothing.
--
-- Keys, all under one hash tag so a script touches a single Redis Cluster slot
-- (P = ARGV[1], e.g. "{hlsfarm}"; KEYS[1] is P..":sweeps", for routing):
--   P:t:<trial>        hash: s sweep, st state, a attempt, e epoch, c cancel requested (0/1),
--                      cost, p payload (JSON), w worker, d lease deadline (ms)
--   P:ready:<sweep>    zset: queued trials, score cost, member "<12-digit inverted seq>:<trial>"
--   P:members:<sweep>  set: every trial of the sweep
--   P:sweeps           zset: sweeps by virtual time (leases granted / priority)
--   P:prio             hash: sweep -> priority
--   P:leases           zset: leased trials by deadline (ms)
--   P:seq              counter: arrival order of ready entries
local P = ARGV[1]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function tkey(k) return P .. ':t:' .. k end

local function push_ready(k)
  local t = tkey(k)
  local seq = redis.call('INCR', P .. ':seq')
  local member = string.format('%012d', 999999999999 - seq) .. ':' .. k
  redis.call('ZADD', P .. ':ready:' .. redis.call('HGET', t, 's'), tonumber(redis.call('HGET', t, 'cost')), member)
end

-- Ends a lease (or a queued wait) in `state`.
local function settle(k, state)
  redis.call('HSET', tkey(k), 'st', state, 'c', 0)
  redis.call('HDEL', tkey(k), 'w', 'd')
  redis.call('ZREM', P .. ':leases', k)
end

-- nil when the trial is leased under exactly (attempt, epoch), else the refusal:
-- "unknown", "illegal:<state>" or "stale:<attempt>:<epoch>".
local function fenced(k, attempt, epoch)
  local t = tkey(k)
  local st = redis.call('HGET', t, 'st')
  if not st then return 'unknown' end
  if st ~= 'leased' then return 'illegal:' .. st end
  local a = tonumber(redis.call('HGET', t, 'a'))
  local e = tonumber(redis.call('HGET', t, 'e'))
  if a ~= tonumber(attempt) or e ~= tonumber(epoch) then
    return 'stale:' .. a .. ':' .. e
  end
  return nil
end

-- A retryable end of a lease: queue again while attempts remain; a cancel order wins.
local function requeue_or_dead(k, max_attempts)
  local t = tkey(k)
  if redis.call('HGET', t, 'c') == '1' then settle(k, 'cancelled') return 'cancelled' end
  if tonumber(redis.call('HGET', t, 'a')) >= tonumber(max_attempts) then settle(k, 'dead') return 'dead' end
  settle(k, 'queued')
  push_ready(k)
  return 'queued'
end

-- Queue a terminal trial again with fresh attempts under a new epoch (the Retry event).
local function retry(k)
  local t = tkey(k)
  redis.call('HSET', t, 'st', 'queued', 'a', 0, 'c', 0)
  redis.call('HINCRBY', t, 'e', 1)
  redis.call('HDEL', t, 'w', 'd')
  push_ready(k)
end
