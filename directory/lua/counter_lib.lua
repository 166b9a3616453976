-- The window arithmetic of congvu.directory.windows.decide in Lua: the ONE copy both
-- scripts run (counter.lua for one key, policyd/lua/multi.lua for batches; each is this
-- library followed by its own body, joined when loaded); the backend-neutral tests hold it
-- to ``decide`` (CT25-3.1 rate limits, CT25-3.2 lockouts).
--
-- A key is read once (HGETALL) into a cache ``st``: entries ``field, window, expiry, amount``
-- at ``st[i..i+3]`` for i = 1, 5, .. < ``st.n`` (window ``false`` once deleted; no field-to-entry
-- map: a table costs more than scanning a key's <= ~60 entries), ``st.max``/``st.min`` the
-- latest/earliest expiry, ``st.ttl`` the expiry Redis's TTL was last set for.  Field names
-- (``"<window_ms>:<index>"``) are parsed once per batch, not once per key (``MEMO``): the keys
-- of a batch share most of them (the same windows' current buckets); one key alone does not.
-- PEXPIRE only when a write moves the key's latest bucket on: the TTL set when that bucket was
-- created already ends at its expiry (Redis expiry only bounds memory; answers never depend on
-- it).  This Redis's Lua pays ~150 ns per C call (``tonumber``, ``math.floor``) and ~45 ns per
-- global read, hence the local aliases, ``x + 0`` and ``now - now % b``.
local call, huge, match, format = redis.call, math.huge, string.match, string.format
local NB, MEMO = 60, true
local WIN, EXP, WIDTH, LASTI, LASTF = {}, {}, {}, {}, {}
local function width(w)
  local b = WIDTH[w]
  if b == nil then b = math.ceil(w / NB); WIDTH[w] = b end
  return b
end
local function load(key)
  local flat = call('HGETALL', key)
  local st = {false, false, false, false, false, false, false, false, n = 0, max = 0, min = 0, ttl = 0}
  local n, max, min = 0, 0, huge
  for j = 1, #flat, 2 do
    local f = flat[j]
    local e, w = EXP[f], WIN[f]
    if e == nil then
      local ws, i = match(f, '^(%d+):(%d+)$')
      w = ws + 0
      e = (i + 1) * width(w) + w
      if MEMO then WIN[f] = w; EXP[f] = e end
    end
    st[n + 1] = f; st[n + 2] = w; st[n + 3] = e; st[n + 4] = flat[j + 1] + 0
    n = n + 4
    if e > max then max = e end
    if e < min then min = e end
  end
  st.n = n; st.max = max; st.min = min; st.ttl = max
  return st
end
local function sums(st, pos, now, out)
  for i = 1, st.n, 4 do
    local at = pos[st[i + 1]]
    if at and st[i + 2] > now then out[at] = out[at] + st[i + 3] end
  end
end
local function wait(st, w, now, over)
  local live = {}
  for i = 1, st.n, 4 do
    if st[i + 1] == w and st[i + 2] > now then live[#live + 1] = {st[i + 2], st[i + 3]} end
  end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local freed, when = 0, now
  for _, e in ipairs(live) do
    freed = freed + e[2]; when = e[1]
    if freed >= over then break end
  end
  return when - now
end
local function add(st, w, amount, now, f)
  local b = width(w)
  local i = (now - now % b) / b
  if f == nil then
    if LASTI[w] ~= i then LASTI[w] = i; LASTF[w] = format('%d:%d', w, i) end
    f = LASTF[w]
  end
  local e = (i + 1) * b + w
  local n, at = st.n, nil
  if e <= st.max then  -- else newer than every stored bucket: not there
    for k = n - 3, 1, -4 do
      if st[k] == f and st[k + 1] then at = k; break end
    end
  end
  if at then
    st[at + 3] = st[at + 3] + amount
  else
    at = n + 1
    st[at] = f; st[at + 1] = w; st[at + 2] = e; st[at + 3] = amount
    st.n = n + 4
  end
  if e > st.max then st.max = e end
  if e < st.min then st.min = e end
  return f, at
end
local function sweep(key, st, now)
  if st.min > now then return end
  local stale, min = {}, huge
  for i = 1, st.n, 4 do
    if st[i + 1] then
      local e = st[i + 2]
      if e <= now then
        stale[#stale + 1] = st[i]; st[i + 1] = false
      elseif e < min then min = e end
    end
  end
  st.min = min
  if #stale > 0 then call('HDEL', key, unpack(stale)) end
end
local function expire(key, st, now)
  if st.max > st.ttl then call('PEXPIRE', key, st.max - now); st.ttl = st.max end
end
