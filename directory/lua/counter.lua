-- One key, every window (after counter_lib.lua): RedisCounters' hit/peek/hit_if_below and
-- the native client's single calls.
-- ARGV: now (ms), amount, mode (peek/hit/check), buckets per window; per window: its ms, its limit
-- (-1 for plain hits), its current bucket's field (``bucket_ms`` arithmetic; Python's string
-- saves Lua a ``string.format``).  Reply: allowed (1/0), retry (ms; -2 none, -1 never), the
-- total per window.
local now, amount, mode = ARGV[1] + 0, ARGV[2] + 0, ARGV[3]
NB, MEMO = ARGV[4] + 0, false  -- one key: no other key to share parsed field names with
local st = load(KEYS[1])
local n = (#ARGV - 4) / 3
local out, pos = {1, -2}, {}
for i = 1, n do out[i + 2] = 0; pos[ARGV[2 + 3 * i] + 0] = i + 2 end
sums(st, pos, now, out)
if mode == 'check' then
  for i = 1, n do
    local lim = ARGV[3 + 3 * i] + 0
    local over = out[i + 2] + amount - lim
    if over > 0 then
      out[1] = 0
      if amount > lim then out[2] = -1; break end
      local r = wait(st, ARGV[2 + 3 * i] + 0, now, over)
      if r > out[2] then out[2] = r end
    end
  end
end
if mode ~= 'peek' and out[1] == 1 then
  for i = 1, n do
    call('HINCRBY', KEYS[1], add(st, ARGV[2 + 3 * i] + 0, amount, now, ARGV[4 + 3 * i]), amount)
    out[i + 2] = out[i + 2] + amount
  end
  sweep(KEYS[1], st, now)
  expire(KEYS[1], st, now)
end
return out
