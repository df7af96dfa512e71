-- Set a bot's status if the bot exists (and, when ARGV[6] lists statuses, only from one of them),
-- and announce it to the room. Checking and setting in one step closes races between a worker
-- moving a bot to running and a user stopping it.
-- KEYS: 1 bot hash. ARGV: 1 status, 2 error text, 3 channel, 4 bot_status packet, 5 publish command,
--       6 statuses the bot may be in now, comma-separated ("" = any)
local current = redis.call('HGET', KEYS[1], 'status')
if not current then
  return 0
end
if ARGV[6] ~= '' and not string.find(',' .. ARGV[6] .. ',', ',' .. current .. ',', 1, true) then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'error', ARGV[2])
redis.call(ARGV[5], ARGV[3], ARGV[4])
return 1
