-- ARGV: P, then trial keys. Returns per trial its fields
-- {s, st, a, e, p, w, stg, ph, r, res, t0, c} (false where absent): one call for many trials.
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = redis.call('HMGET', tkey(ARGV[i]), 's', 'st', 'a', 'e', 'p', 'w', 'stg', 'ph', 'r', 'res', 't0', 'c')
end
return out
