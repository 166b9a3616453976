-- De-duplication: KEYS[1] a marker.  ARGV: now (ms), the marker's expiry (ms), its TTL (ms).
-- Reply: 1 if it was already marked and still live at now, else 0 (and it is marked).
local v = redis.call('GET', KEYS[1])
if v and tonumber(v) > tonumber(ARGV[1]) then return 1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 0
