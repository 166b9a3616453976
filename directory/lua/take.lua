-- Take the due last-login stamps: KEYS[1] ``ll:pending``, KEYS[2] ``ll:taken`` (address -> when
-- it may be taken again).  ARGV: now (ms), the next time (ms) a taken address may be taken.
-- Reply: address, stamp, address, stamp ... of every pending stamp not blocked.
local now = tonumber(ARGV[1])
local taken = redis.call('HGETALL', KEYS[2])
local blocked = {}
for j = 1, #taken, 2 do
  if tonumber(taken[j + 1]) <= now then redis.call('HDEL', KEYS[2], taken[j])
  else blocked[taken[j]] = true end
end
local out = {}
local pending = redis.call('HGETALL', KEYS[1])
for j = 1, #pending, 2 do
  local a = pending[j]
  if not blocked[a] then
    out[#out + 1] = a; out[#out + 1] = pending[j + 1]
    redis.call('HDEL', KEYS[1], a)
    redis.call('HSET', KEYS[2], a, ARGV[2])
  end
end
return out
