-- Mark a request cancelled and tell the workers: the one answering it stops, and one that takes
-- it from the inbox later drops it.
-- KEYS: 1 the cancel marker; ARGV: 1 "announce" or "announced" (the room was told already),
--       2 TTL seconds, 3 workers' control channel, 4 the notice
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
