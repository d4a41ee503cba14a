-- ARGV: P, worker, capabilities (JSON). Records a worker and when it was last seen.
redis.call('HSET', P .. ':workers', ARGV[2], ARGV[3])
redis.call('ZADD', P .. ':wseen', now_ms(), ARGV[2])
redis.call('SREM', P .. ':drain', ARGV[2])
emit('worker', '', '', '', ARGV[2], 'registered')
return now_ms()
