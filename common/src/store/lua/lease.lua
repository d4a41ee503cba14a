-- ARGV: P, lease_ms, seat limits ("feature=limit,..."), then for each worker asking (one
-- call serves many: a matching pass's wave) five values: worker, max, free memory MiB, free
-- cores, classes (comma list; "*" for any). Returns, per worker in order, {leases, seen,
-- avoided, wait}: leases are {trial, sweep, attempt, epoch, payload, memory MiB reserved}:
-- the active sweep with the least virtual time first; within it the costliest queued trial
-- of a class the worker serves that fits its free memory, cores and the seats (a feature
-- held down after a licence refusal counts as limited to the seats in use then, until the
-- hold ends), and that this worker is not to avoid (it failed the trial for reasons of its
-- own, an infrastructure failure, a short while ago, and another worker is about). Then, for
-- a worker that got nothing, what the caller may cache: whether any queued trial of those
-- classes was seen at all (none: nothing can be leased until a trial is queued), whether one
-- was left for this worker alone (it avoids it), and in how many ms the soonest trial held
-- back by time (retry backoff, avoidance, a seat hold) may be leased (-1: none).
local lease_ms = tonumber(ARGV[2])
local limits = {}
for _, pair in ipairs(split(ARGV[3])) do
  local f, n = string.match(pair, '([^=]+)=(%d+)')
  if f then limits[f] = tonumber(n) end
end
local now = now_ms()
local deadline = now + lease_ms
-- Another worker seen in the last 10 s: only then does a worker that failed a trial for
-- reasons of its own leave it to others (a lone worker takes it back at once).
local all_seen = redis.call('ZCOUNT', P .. ':wseen', now - 10000, '+inf')
local hold_end = nil
local holds = redis.call('HGETALL', P .. ':hold')
for i = 1, #holds, 2 do
  local cap, until_ms = string.match(holds[i + 1], '(%d+):(%d+)')
  if cap and tonumber(until_ms) > now then
    local f = holds[i]
    if hold_end == nil or tonumber(until_ms) < hold_end then hold_end = tonumber(until_ms) end
    if not limits[f] or tonumber(cap) < limits[f] then limits[f] = tonumber(cap) end
  else
    redis.call('HDEL', P .. ':hold', holds[i])
  end
end

local function seats_free(seat)
  for _, f in ipairs(split(seat)) do
    if limits[f] and tonumber(redis.call('HGET', P .. ':seats', f) or '0') >= limits[f] then return false end
  end
  return true
end

local function lease_for(worker, max, mem, cpu, class_list)
  local any = class_list == '*'
  local worker_classes = split(class_list)
  local others = all_seen
  local seen = tonumber(redis.call('ZSCORE', P .. ':wseen', worker) or '0')
  if seen >= now - 10000 then others = others - 1 end
  local seen_any, personal, soonest = 0, 0, nil
  local function sooner(at)
    if at > now and (soonest == nil or at < soonest) then soonest = at end
  end
  local out = {}
  while #out < max do
    local pick = nil
    for _, sweep in ipairs(redis.call('ZRANGE', P .. ':sweeps', 0, -1)) do
      local classes = worker_classes
      if any then classes = redis.call('SMEMBERS', P .. ':cls:' .. sweep) end
      for _, cls in ipairs(classes) do
        local ready = P .. ':ready:' .. sweep .. ':' .. cls
        local top = redis.call('ZREVRANGE', ready, 0, 15, 'WITHSCORES')
        for i = 1, #top, 2 do
          local cost = tonumber(top[i + 1])
          if pick and cost <= pick.cost then break end
          local k = string.sub(top[i], 14)
          local f = redis.call('HMGET', tkey(k), 'st', 's', 'mem', 'cpu', 'seat', 'nb', 'xw', 'xu')
          if f[1] ~= 'queued' or f[2] ~= sweep then
            redis.call('ZREM', ready, top[i])
          else
            seen_any = 1
            local nb, avoided = tonumber(f[6] or '0'), others > 0 and f[7] == worker
              and tonumber(f[8] or '0') > now
            if tonumber(f[3] or '0') <= mem and tonumber(f[4] or '0') <= cpu
                and nb <= now and seats_free(f[5]) and not avoided then
              pick = {k = k, sweep = sweep, cost = cost, ready = ready, member = top[i],
                mem = tonumber(f[3] or '0'), cpu = tonumber(f[4] or '0'), seat = f[5]}
              break
            end
            sooner(nb)
            if avoided then
              personal = 1
              sooner(tonumber(f[8]))
            end
            if hold_end then sooner(hold_end) end
          end
        end
      end
      if pick then break end
    end
    if not pick then break end
    local t = tkey(pick.k)
    redis.call('ZREM', pick.ready, pick.member)
    set_state(pick.k, 'leased')
    local attempt = redis.call('HINCRBY', t, 'a', 1)
    local held = 0
    if pick.seat and pick.seat ~= '' then
      held = 1
      for _, f in ipairs(split(pick.seat)) do redis.call('HINCRBY', P .. ':seats', f, 1) end
    end
    redis.call('HSET', t, 'w', worker, 'd', deadline, 't0', now, 'hs', held, 'stg', '', 'ph', '')
    redis.call('ZADD', P .. ':leases', deadline, pick.k)
    local prio = tonumber(redis.call('HGET', P .. ':sw:' .. pick.sweep, 'prio') or '1')
    redis.call('ZINCRBY', P .. ':sweeps', 1 / prio, pick.sweep)
    emit('leased', pick.k, pick.sweep, 'leased', worker, 'attempt ' .. attempt)
    mem = mem - pick.mem
    cpu = cpu - pick.cpu
    out[#out + 1] = {pick.k, pick.sweep, attempt, tonumber(redis.call('HGET', t, 'e') or '0'),
      redis.call('HGET', t, 'p') or 'null', pick.mem}
  end
  redis.call('ZADD', P .. ':wseen', now, worker)
  local wait = -1
  if soonest then wait = soonest - now end
  return {out, seen_any, personal, wait}
end

local answers = {}
for g = 4, #ARGV, 5 do
  answers[#answers + 1] = lease_for(ARGV[g], tonumber(ARGV[g + 1]), tonumber(ARGV[g + 2]),
    tonumber(ARGV[g + 3]), ARGV[g + 4])
end
return answers
