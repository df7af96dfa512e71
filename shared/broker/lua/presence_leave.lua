-- Remove one connection (ARGV[1] member, ARGV[2] user), or with ARGV[1] == '' every connection that
-- expired before ARGV[3] ms. Returns {users whose last connection left, users left in the room}.
local function drop(member, user, gone)
  if redis.call('ZREM', KEYS[1], member) == 1 then
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      gone[#gone + 1] = user
    end
  end
end
local gone = {}
if ARGV[1] ~= '' then
  drop(ARGV[1], ARGV[2], gone)
else
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[3], 'LIMIT', 0, 500)
  for _, member in ipairs(expired) do
    drop(member, string.match(member, '^([^\31]*)'), gone)
  end
end
return {gone, redis.call('HLEN', KEYS[2])}
