-- Add one connection to a room's presence; tell whether it is the user's first.
-- KEYS: 1 connections sorted set (score = expiry ms), 2 users hash (user -> connection count)
-- ARGV: 1 member (user US connection), 2 user, 3 expiry ms, 4 most members to list
local first = 0
if redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
    first = 1
  end
end
local count = redis.call('HLEN', KEYS[2])
local members
if count <= tonumber(ARGV[4]) then
  members = redis.call('HKEYS', KEYS[2])
else
  members = {}
  local scan = redis.call('HSCAN', KEYS[2], 0, 'COUNT', ARGV[4])
  for i = 1, #scan[2], 2 do
    if #members < tonumber(ARGV[4]) then
      members[#members + 1] = scan[2][i]
    end
  end
end
return {first, count, members}
