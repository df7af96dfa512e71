-- Where one user message is as a request: its stored tail, and the markers of its reply.
-- KEYS: 1 history stream, 2 the reply marker, 3 the cancel marker, 4 the reply's hash while written
-- ARGV: 1 message id
-- Returns {tail or "", replied 0/1, cancelled 0/1, streaming 0/1}
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
local tail = ''
if entry[1] then
  local fields = entry[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 't' then
      tail = fields[i + 1]
    end
  end
end
return {tail, redis.call('EXISTS', KEYS[2]), redis.call('EXISTS', KEYS[3]), redis.call('EXISTS', KEYS[4])}
