-- A last-login stamp: KEYS[1] the ``ll:pending`` hash.  ARGV: the address, the login's time (ms),
-- the stamp (``when<TAB>service<TAB>ip``).  The latest stamp wins.  Reply: 1 if written, else 0.
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local t = tonumber(string.match(cur, '^(%d+)'))
  if t and t >= tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
