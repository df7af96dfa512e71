-- Claim, renew or release a bot's lease, only as its holder (or, to claim, when nobody holds it).
-- KEYS: 1 lease. ARGV: 1 owner, 2 ttl ms, 3 "claim", "renew" or "release". Returns 1 on success.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  if ARGV[3] == 'release' then
    redis.call('DEL', KEYS[1])
  else
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
  return 1
end
if ARGV[3] == 'claim' and not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
