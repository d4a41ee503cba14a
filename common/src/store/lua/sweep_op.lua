-- ARGV: P, sweep, op (cancel | retry | counts), then trial keys (empty: the whole sweep).
-- cancel: queued trials end cancelled, leased ones get a cancel order; returns
--   {dropped, stopping}.
-- retry: failed, dead and cancelled trials are queued again; returns {requeued}.
-- counts: {queued, leased, succeeded, failed, cancelled, dead}.
local sweep, op = ARGV[2], ARGV[3]
if not redis.call('ZSCORE', P .. ':all', sweep) then return {err = 'unknown_sweep'} end
if op == 'counts' then
  local n = redis.call('HMGET', P .. ':n:' .. sweep, 'queued', 'leased', 'succeeded', 'failed', 'cancelled', 'dead')
  for i = 1, 6 do n[i] = tonumber(n[i] or '0') end
  return n
end
local members
if #ARGV > 3 then
  members = {}
  for i = 4, #ARGV do
    if redis.call('HGET', tkey(ARGV[i]), 's') == sweep then members[#members + 1] = ARGV[i] end
  end
else
  members = redis.call('SMEMBERS', P .. ':members:' .. sweep)
end
local dropped, stopping = 0, 0
for _, k in ipairs(members) do
  local t = tkey(k)
  local st = redis.call('HGET', t, 'st')
  if op == 'cancel' then
    if st == 'queued' then
      local f = redis.call('HMGET', t, 'rm', 'cls')
      redis.call('ZREM', P .. ':ready:' .. sweep .. ':' .. (f[2] or ''), f[1] or '')
      settle(k, 'cancelled')
      dropped = dropped + 1
    elseif st == 'leased' and redis.call('HGET', t, 'c') ~= '1' then
      redis.call('HSET', t, 'c', 1)
      stopping = stopping + 1
    end
  elseif op == 'retry' then
    if st == 'failed' or st == 'dead' or st == 'cancelled' then retry(k) dropped = dropped + 1 end
  end
end
if op == 'cancel' then
  emit('cancel', '', sweep, '', '', dropped .. ' dropped, ' .. stopping .. ' stopping')
  return {dropped, stopping}
end
emit('retry', '', sweep, '', '', dropped .. ' requeued')
return {dropped}
