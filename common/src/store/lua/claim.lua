-- ARGV: P, set ("finished" or "commits"), max, hold_ms. Claims up to `max` entries whose
-- claim time has come, holding each for `hold_ms` (a claimer that dies is replaced after it).
-- Returns the claimed members.
local set = P .. ':' .. ARGV[2]
local now = now_ms()
local out = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(out) do redis.call('ZADD', set, now + tonumber(ARGV[4]), m) end
return out
