-- A failed login (CT25-3.2): KEYS[1] a sorted set of fingerprints scored by time.
-- ARGV: now (ms), the window's start (ms), the fingerprint, the most fingerprints kept, the TTL (ms).
-- Repeats of one fingerprint count once (ZADD GT moves its time on).  Reply: the failures in the window.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZADD', KEYS[1], 'GT', ARGV[1], ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[4]) + 1))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return redis.call('ZCOUNT', KEYS[1], '(' .. ARGV[2], '+inf')
