-- Set a bot's status if the bot exists and announce it to the room.
-- KEYS: 1 bot hash. ARGV: 1 status, 2 error text, 3 channel, 4 bot_status frame, 5 publish command
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'error', ARGV[2])
redis.call(ARGV[5], ARGV[3], '\31\n' .. ARGV[4])
return 1
