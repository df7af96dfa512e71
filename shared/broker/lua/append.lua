-- Store a message in the room's history, publish it, and queue it for the bot: one round trip.
-- KEYS: 1 history stream, 2 bot inbox stream, 3 bot hash, 4 "replied" marker of reply_to
-- ARGV: 1 channel, 2 frame tail ("room":...}), 3 history max length, 4 max age in ms (0 = none),
--       5 "1" to queue for the bot, 6 reply_to ("" = none), 7 marker TTL seconds,
--       8 room id as a JSON string, 9 publish command (PUBLISH or SPUBLISH),
--       10 most requests a bot's inbox may hold
-- Returns {id, duplicate, queued}, or {"", 0, 0} when the bot's inbox is full (nothing stored).
if ARGV[5] == '1' and redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[10]) then
  return {'', 0, 0}
end
if ARGV[6] ~= '' then
  local first = redis.call('GET', KEYS[4])
  if first then
    return {first, 1, 0}
  end
end
-- approximate trimming drops whole stream nodes (100 entries by default): exact below that size,
-- so "an entry with twice history-max newer ones is gone" holds for every setting
local trim = '~'
if tonumber(ARGV[3]) < 100 then
  trim = '='
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', trim, ARGV[3], '*', 't', ARGV[2])
local ms = string.match(id, '^(%d+)')
if ARGV[4] ~= '0' then
  -- exact: '~' only drops whole nodes, so a room with fewer than 100 messages would keep them forever
  redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', tonumber(ms) - tonumber(ARGV[4])))
end
local head = '{"type":"message","id":"' .. id .. '","ts":' .. ms .. ','
local frame = head .. ARGV[2]
local queued = 0
if ARGV[5] == '1' and redis.call('HGET', KEYS[3], 'status') ~= 'running' then
  -- the live frame itself says the request waits for the bot: no extra frame to every member
  queued = 1
  redis.call(ARGV[9], ARGV[1], id .. '\31\n' .. head .. '"queued":true,' .. ARGV[2])
else
  redis.call(ARGV[9], ARGV[1], id .. '\31\n' .. frame)
end
if ARGV[6] ~= '' then
  redis.call('SET', KEYS[4], id, 'EX', ARGV[7])
end
if ARGV[5] == '1' then
  redis.call('XADD', KEYS[2], '*', 'm', id, 'f', frame)
  if ARGV[9] == 'SPUBLISH' then
    -- on a cluster workers cannot block on inboxes in many slots at once: they listen for this notice,
    -- sent on a shard channel named like the inbox key (same slot)
    redis.call('SPUBLISH', KEYS[2], '')
  end
end
return {id, 0, queued}
