-- ARGV: P, max_attempts. Leases past their deadline end: queued again at once, or dead when
-- out of attempts, or cancelled when a cancel was ordered. Returns how many, and in how many
-- ms the soonest lease left expires (-1: none is left).
local now = now_ms()
local n = 0
for _, k in ipairs(redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', now)) do
  local t = tkey(k)
  local f = redis.call('HMGET', t, 'st', 'd', 's', 'w')
  if f[1] == 'leased' and tonumber(f[2] or '0') <= now then
    local state = requeue_or_dead(k, ARGV[2], 0)
    emit('expired', k, f[3], state, f[4], 'lease expired at ' .. f[2])
    n = n + 1
  else
    redis.call('ZREM', P .. ':leases', k)
  end
end
local first = redis.call('ZRANGE', P .. ':leases', 0, 0, 'WITHSCORES')
local next_ms = -1
if #first == 2 then next_ms = math.max(0, tonumber(first[2]) - now) end
return {n, next_ms}
