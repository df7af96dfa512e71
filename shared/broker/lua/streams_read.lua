-- Every reply being written in a room, as it stands: one consistent read for a joining client.
-- KEYS: 1 the room's set of replies in progress; ARGV: 1 the prefix of a reply's keys (the hash of
-- reply R is ARGV[1] .. R, its text ARGV[1] .. R .. ARGV[2]), 2 the suffix of the text's key
-- Returns a flat list: reply_to, attempt, seq, text, reply_to, ... (expired replies are dropped)
local out = {}
for _, reply_to in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local fields = redis.call('HMGET', ARGV[1] .. reply_to, 'a', 's')
  if fields[1] then
    out[#out + 1] = reply_to
    out[#out + 1] = fields[1]
    out[#out + 1] = fields[2]
    out[#out + 1] = redis.call('GET', ARGV[1] .. reply_to .. ARGV[2]) or ''
  else
    redis.call('SREM', KEYS[1], reply_to)
  end
end
return out
