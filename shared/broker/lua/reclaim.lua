-- Move to a consumer the oldest pending requests idle long enough, with their delivery counts
-- (XAUTOCLAIM alone does not tell them).
-- KEYS: 1 inbox. ARGV: 1 group, 2 consumer, 3 min idle ms, 4 count.
-- Returns {{id, fields, deliveries}, ...}.
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0', 'COUNT', ARGV[4])
local out = {}
for _, entry in ipairs(claimed[2]) do
  if entry then
    local info = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    out[#out + 1] = {entry[1], entry[2], info[1][4]}
  end
end
return out
