-- A worker starts on a request: announce it to the room, unless it was cancelled meanwhile or,
-- for a bot whose send policy answers only a user's latest message, a newer one of that user
-- waits in the inbox. In the same round trip as the request's other first frames, so a quick
-- request still costs one.
-- KEYS: 1 the request's cancel marker, 2 the bot's inbox
-- ARGV: 1 publish command, 2 channel, 3 the status packet, 4 the request's inbox entry id,
--       5 its sender ("" = no check for newer messages), 6 most inbox entries to look through
-- Returns "announce" / "announced" (the cancel mark) or "superseded", publishing nothing then.
local mark = redis.call('GET', KEYS[1])
if mark then
  return mark
end
if ARGV[5] ~= '' then
  for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '(' .. ARGV[4], '+', 'COUNT', ARGV[6])) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'f' then
        local ok, frame = pcall(cjson.decode, fields[i + 1])
        if ok and type(frame) == 'table' and type(frame['from']) == 'table'
          and frame['from']['kind'] == 'user' and frame['from']['id'] == ARGV[5] then
          return 'superseded'
        end
      end
    end
  end
end
redis.call(ARGV[1], ARGV[2], ARGV[3])
return false
