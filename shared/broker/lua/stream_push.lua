-- Add a piece to a reply being written and publish its delta, in one step: a client that reads
-- the reply after this sees the piece in the text, one that read it before gets the delta live.
-- KEYS: 1 the reply's hash (a attempt, s last seq), 2 its text so far (a string, appended to),
--       3 the room's set of replies in progress, 4 the request's cancel marker
-- ARGV: 1 channel, 2 publish command (PUBLISH or SPUBLISH), 3 packet, 4 reply_to, 5 attempt,
--       6 seq, 7 piece, 8 most bytes of text kept, 9 TTL in ms
-- Returns 1, or 0 (nothing done) when a later attempt owns the reply or the request was cancelled.
if redis.call('EXISTS', KEYS[4]) == 1 then
  return 0
end
local attempt = tonumber(ARGV[5])
local current = tonumber(redis.call('HGET', KEYS[1], 'a') or '0')
if attempt < current then
  return 0
end
if attempt > current then
  -- a new attempt starts the reply again: what an earlier one wrote is not part of it
  redis.call('HSET', KEYS[1], 'a', ARGV[5], 's', '0')
  redis.call('DEL', KEYS[2])
end
-- APPEND, not a rewrite of the text: a long reply costs the same per piece to the end
if redis.call('STRLEN', KEYS[2]) + #ARGV[7] <= tonumber(ARGV[8]) then
  if #ARGV[7] > 0 then
    redis.call('APPEND', KEYS[2], ARGV[7])
  end
  redis.call('HSET', KEYS[1], 's', ARGV[6])
end
-- past the bound the text stops growing and so does its position: a late joiner gets the start,
-- then the live pieces; the final message has it all
redis.call('PEXPIRE', KEYS[1], ARGV[9])
redis.call('PEXPIRE', KEYS[2], ARGV[9])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[9])
redis.call(ARGV[2], ARGV[1], ARGV[3])
return 1
