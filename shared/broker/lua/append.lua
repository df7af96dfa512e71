-- Store a message in the room's history, publish it, and queue it for the bot: one round trip.
-- KEYS: 1 history stream, 2 bot inbox stream, 3 bot hash, 4 the message's marker: "replied" of
--       reply_to, or "sent" of the sender's client id, 5 the hash of reply_to's stream while it is
--       written, 6 the room's set of such streams, 7 the cancel marker of reply_to, 8 the text of
--       reply_to's stream
-- ARGV: 1 channel, 2 frame tail ("room":...}) kept in history,
--       3 frame template, 4 frame template marked queued ("" unless a request),
--       5 packet header template, 6 history max length, 7 max age in ms (0 = none),
--       8 "1" to queue for the bot, 9 "1" when the marker applies (a second append with it
--       stores nothing and returns the first id), 10 marker TTL seconds,
--       11 publish command (PUBLISH or SPUBLISH), 12 most requests a bot's inbox may hold,
--       13 "1" to tell readers on the inbox's own shard channel that a request is queued,
--       14 reply_to ("" = not a reply), 15 "1" to store a reply although its request was cancelled
-- Templates are written in Python (shared/broker/redis_history.py); each NUL byte in one is a
-- hole that this script fills with the id or the time the XADD gave, in the order listed there.
-- JSON as Python writes it never holds a raw NUL byte, so no other byte is taken for a hole.
-- Returns {id, duplicate, queued}, {"", 0, 0} when the bot's inbox is full, {"", 1, 0} when the
-- request a reply answers was cancelled (nothing stored either way).
local function fill(template, ...)
  local parts, start = {}, 1
  for _, value in ipairs({...}) do
    local hole = string.find(template, '\0', start, true)
    parts[#parts + 1] = string.sub(template, start, hole - 1)
    parts[#parts + 1] = value
    start = hole + 1
  end
  parts[#parts + 1] = string.sub(template, start)
  return table.concat(parts)
end

if ARGV[8] == '1' and redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[12]) then
  return {'', 0, 0}
end
if ARGV[9] == '1' then
  local first = redis.call('GET', KEYS[4])
  if first then
    return {first, 1, 0}
  end
end
if ARGV[14] ~= '' and ARGV[15] ~= '1' and redis.call('EXISTS', KEYS[7]) == 1 then
  return {'', 1, 0}
end
-- approximate trimming drops whole stream nodes (100 entries by default): exact below that size,
-- so "an entry with twice history-max newer ones is gone" holds for every setting
local trim = '~'
if tonumber(ARGV[6]) < 100 then
  trim = '='
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', trim, ARGV[6], '*', 't', ARGV[2])
local ms = string.match(id, '^(%d+)')
if ARGV[7] ~= '0' then
  -- exact: '~' only drops whole nodes, so a room with fewer than 100 messages would keep them forever
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', tonumber(ms) - tonumber(ARGV[7])))
end
local frame = fill(ARGV[3], id, ms)
local header = fill(ARGV[5], id)
local queued = 0
if ARGV[8] == '1' and redis.call('HGET', KEYS[3], 'status') ~= 'running' then
  -- the live frame itself says the request waits for the bot: no extra frame to every member
  queued = 1
  redis.call(ARGV[11], ARGV[1], header .. fill(ARGV[4], id, ms))
else
  redis.call(ARGV[11], ARGV[1], header .. frame)
end
if ARGV[9] == '1' then
  redis.call('SET', KEYS[4], id, 'EX', ARGV[10])
end
if ARGV[14] ~= '' then
  -- a reply: the text that was being written is this message now, for joiners too
  redis.call('DEL', KEYS[5], KEYS[8])
  redis.call('SREM', KEYS[6], ARGV[14])
end
if ARGV[8] == '1' then
  redis.call('XADD', KEYS[2], '*', 'm', id, 'f', frame)
  if ARGV[13] == '1' then
    -- on a cluster workers cannot block on inboxes in many slots at once: they listen for this notice,
    -- sent on a shard channel named like the inbox key (same slot)
    redis.call('SPUBLISH', KEYS[2], '')
  end
end
return {id, 0, queued}
