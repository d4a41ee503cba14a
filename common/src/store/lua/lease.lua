-- ARGV: P, worker, max, lease_ms. Returns {trial, sweep, attempt, epoch, payload} per lease:
-- the sweep with the least virtual time first, the costliest queued trial within it.
local worker, max, lease_ms = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local deadline = now_ms() + lease_ms
local out = {}
while #out < max do
  local got = false
  for _, sweep in ipairs(redis.call('ZRANGE', P .. ':sweeps', 0, -1)) do
    local ready = P .. ':ready:' .. sweep
    while true do
      local popped = redis.call('ZPOPMAX', ready)
      if #popped == 0 then break end
      local k = string.sub(popped[1], 14)
      local t = tkey(k)
      if redis.call('HGET', t, 'st') == 'queued' and redis.call('HGET', t, 's') == sweep then
        local attempt = redis.call('HINCRBY', t, 'a', 1)
        redis.call('HSET', t, 'st', 'leased', 'w', worker, 'd', deadline)
        redis.call('ZADD', P .. ':leases', deadline, k)
        local prio = tonumber(redis.call('HGET', P .. ':prio', sweep) or '1')
        redis.call('ZINCRBY', P .. ':sweeps', 1 / prio, sweep)
        out[#out + 1] = {k, sweep, attempt, tonumber(redis.call('HGET', t, 'e')), redis.call('HGET', t, 'p')}
        got = true
        break
      end
    end
    if got then break end
  end
  if not got then break end
end
return out
