-- ARGV: P, sweep, op (cancel | retry | counts).
-- cancel: queued trials end cancelled, leased ones get a cancel order; returns how many.
-- retry: failed, dead and cancelled trials are queued again; returns how many.
-- counts: {queued, leased, succeeded, failed, cancelled, dead}.
local sweep, op = ARGV[2], ARGV[3]
if not redis.call('ZSCORE', P .. ':sweeps', sweep) then return {err = 'unknown_sweep'} end
local members = redis.call('SMEMBERS', P .. ':members:' .. sweep)
if op == 'counts' then
  local order = {queued = 1, leased = 2, succeeded = 3, failed = 4, cancelled = 5, dead = 6}
  local counts = {0, 0, 0, 0, 0, 0}
  for _, k in ipairs(members) do
    local i = order[redis.call('HGET', tkey(k), 'st')]
    if i then counts[i] = counts[i] + 1 end
  end
  return counts
end
local n = 0
for _, k in ipairs(members) do
  local st = redis.call('HGET', tkey(k), 'st')
  if op == 'cancel' then
    if st == 'queued' then settle(k, 'cancelled') n = n + 1
    elseif st == 'leased' then redis.call('HSET', tkey(k), 'c', 1) n = n + 1 end
  elseif op == 'retry' then
    if st == 'failed' or st == 'dead' or st == 'cancelled' then retry(k) n = n + 1 end
  end
end
return n
