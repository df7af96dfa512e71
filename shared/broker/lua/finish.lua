-- Forget a request (acknowledged, or moved to the dead letters) and announce it, in one step.
-- KEYS: 1 inbox, 2 dead-letter stream, 3 "replied" marker of the request's message.
-- ARGV: 1 group, 2 entry id, 3 "1" to act only if the reply is stored, 4 publish command ("" = none),
--       5 channel, 6 packet to publish once acknowledged; then for a dead letter 7 message id,
--       8 frame, 9 reason, 10 attempts, 11 dead-letter max length.
-- Returns 1 if the entry was pending until now, 0 if it was gone, -1 if its reply is not stored.
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[3]) == 0 then
  return -1
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
local deleted = redis.call('XDEL', KEYS[1], ARGV[2])
if deleted == 1 then
  if ARGV[7] then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[11], '*', 'm', ARGV[7], 'f', ARGV[8], 'reason', ARGV[9],
      'attempts', ARGV[10])
  end
  if ARGV[4] ~= '' then
    redis.call(ARGV[4], ARGV[5], ARGV[6])
  end
end
return deleted
