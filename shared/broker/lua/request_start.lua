-- A worker starts on a request: announce it to the room, unless it was cancelled meanwhile.
-- In the same round trip as the request's other first frames, so a quick request still costs one.
-- KEYS: 1 the request's cancel marker; ARGV: 1 publish command, 2 channel, 3 the status packet
-- Returns the cancel mark ("announce" or "announced") when it was cancelled (nothing published).
local mark = redis.call('GET', KEYS[1])
if mark then
  return mark
end
redis.call(ARGV[1], ARGV[2], ARGV[3])
return false
