-- Record a live worker and drop the ones whose heartbeat expired; scores are Redis's clock, not
-- the workers', so workers with skewed clocks still agree.
-- KEYS: 1 workers sorted set. ARGV: 1 worker, 2 ttl ms. Returns how many workers are live.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZCARD', KEYS[1])
