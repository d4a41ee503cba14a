-- ARGV: P, max_attempts. Leases past their deadline end: queued again, or dead when out of
-- attempts, or cancelled when a cancel was ordered. Returns how many.
local now = now_ms()
local n = 0
for _, k in ipairs(redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', now)) do
  local t = tkey(k)
  local d = tonumber(redis.call('HGET', t, 'd') or '0')
  if redis.call('HGET', t, 'st') == 'leased' and d <= now then
    requeue_or_dead(k, ARGV[2])
    n = n + 1
  else
    redis.call('ZREM', P .. ':leases', k)
  end
end
return n
