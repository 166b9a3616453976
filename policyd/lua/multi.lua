-- A batch of messages in mode ``check``, after counter_lib.lua (the arithmetic counter.lua runs
-- too, so both clients share the counters and give the same answers).  ARGV[1] is the batch's
-- plan and KEYS every key, in order; the plan's layout and the reply's are described with the
-- Python that packs and reads them (policyd/batch.py).
--
-- All-or-nothing per message (CT25-3.1): phase 1 reads each key once per batch (the cache
-- keeps it for later messages) and checks the windows in order, adding each to the cache
-- only; at the first refusal it takes those additions back, and NOTHING is written, so a
-- deferred message and its retries do not burn the other windows' budget.  Phase 2, when
-- every window passed, writes without reading again (every HINCRBY, then per key in order the
-- HDEL of buckets stale at its ``now`` and a PEXPIRE only when the key's latest bucket moved on).
-- Reply: one string; per message (``;`` between them) the totals of the keys answered,
-- ``,``-separated (every key if counted; up to the refused one otherwise, then ``/`` and its
-- retry in ms, -1 for never).
local p = {struct.unpack('<' .. string.rep('d', #ARGV[1] / 8), ARGV[1])}
NB = p[1]
local sp, a, states, out, k, pos, sum = p[2], 4, {}, {}, 0, {}, {0}
local KS, FS, IS, AS, NS, SS, UN, UX, UM = {}, {}, {}, {}, {}, {}, {}, {}, {}
for m = 1, p[3] do
  local now, nk = p[a], p[a + 1]
  a = a + 2
  if m > 1 then out[#out + 1] = ';' end
  local refused = 0
  for j = 1, nk do
    local s, amount, t = p[a], p[a + 1], now
    a = a + 2
    if s < 0 then s = -s; t = p[a]; a = a + 1 end
    local key = KEYS[k + j]
    local st = states[key]
    if st == nil then st = load(key); states[key] = st end
    local w, lim = p[sp + 2 * s - 2], p[sp + 2 * s - 1]
    pos[w] = 1; sum[1] = 0
    sums(st, pos, t, sum)
    pos[w] = nil
    local total = sum[1]
    if j > 1 then out[#out + 1] = ',' end
    local over = total + amount - lim
    if over > 0 then
      out[#out + 1] = total; out[#out + 1] = '/'
      out[#out + 1] = amount > lim and -1 or wait(st, w, t, over)
      refused = j
      break
    end
    KS[j] = key; SS[j] = st; AS[j] = amount; NS[j] = t; UN[j] = st.n; UX[j] = st.max; UM[j] = st.min
    FS[j], IS[j] = add(st, w, amount, t)
    out[#out + 1] = total + amount
  end
  if refused > 0 then
    for j = refused - 1, 1, -1 do
      local st, i = SS[j], IS[j]
      if i > UN[j] then
        for x = i, i + 3 do st[x] = nil end
        st.n = UN[j]
      else
        st[i + 3] = st[i + 3] - AS[j]
      end
      st.max = UX[j]; st.min = UM[j]
    end
    for j = refused + 1, nk do
      if p[a] < 0 then a = a + 3 else a = a + 2 end
    end
  else
    for j = 1, nk do call('HINCRBY', KS[j], FS[j], AS[j]) end
    for j = 1, nk do
      local st, t = SS[j], NS[j]
      if st.min <= t then sweep(KS[j], st, t) end
      if st.max > st.ttl then expire(KS[j], st, t) end
    end
  end
  k = k + nk
end
return table.concat(out)
