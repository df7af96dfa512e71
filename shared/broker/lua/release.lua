-- Give a request back so that the bot's next server reclaims it at once: it looks idle for long.
-- A script so that the reply is not parsed as stream entries (XCLAIM JUSTID gives ids only).
-- KEYS: 1 inbox. ARGV: 1 group, 2 consumer, 3 entry id, 4 idle ms.
return redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
