-- apply.lua: apply one batch of validated CRM events to the KPI state, atomically.
--
-- KEYS: none. Every key is "<ARGV[1]><kind>:<id>" in one namespace (standalone Redis,
--       not Cluster: the joins touch keys that cannot be declared up front).
-- ARGV[1] key prefix, e.g. "kpi:"
-- ARGV[2] JSON config {keep={m=,h=,d=} seconds a bucket is kept after its start, measured
--         against the newest event time; grace = extra seconds of processing time;
--         dttl = de-duplication TTL; ettl = entity TTL; cap = distinct values admitted per
--         dimension}
-- ARGV[3] msgpack array of facts (built by store.py; msgpack decodes ~2x faster than JSON), each:
--         i event_id, y type code, t occurred_at (epoch us), m/h/d bucket starts (epoch s, as
--         strings: number-to-string conversion in Lua costs a microsecond per key),
--         type fields (l lead, k deal, c customer, r rep, s source, g segment,
--         a amount in micro-units, st stage, x margin micro-units, cat, p/q flags),
--         and optionally w (offset-watermark field) and o (offset) for events read from Kafka.
-- ARGV[4] JSON object {watermark field: offset} to raise after the batch (Kafka partitions).
-- ARGV[5] newest occurred_at of the batch, epoch seconds.
-- Returns {outcomes, folds_r, folds_s, folds_g}: outcomes is a string with one character per
--         fact, in order: 'a' applied, 'd' duplicate, 'r' redelivered (offset at or below the
--         watermark), 'c' conflict; folds_* count the applied facts whose rep / source /
--         segment was folded into 'other' by the dimension cap.
--
-- Counters are exact integers of any size (wide.lua, prepended by store.py): every
-- contribution is below 2^52 in magnitude, sums spill into wide integers before a double
-- could lose a unit, so no counter is ever rounded or wrapped.
--
-- Dimension cap: each dimension (r, s, g) admits at most CFG.cap distinct values, recorded
-- for good in the set "dv:<dim>"; a value first seen once the set is full is counted under
-- 'other'. 'unassigned', 'unknown' and 'other' are reserved labels, always themselves and not
-- counted. A value is mapped to its label once, when the event carrying it is applied, and
-- entities store the label, never the raw value: a later retraction hits exactly the label
-- the addition hit, even if the cap is changed in between.
--
-- Contract: the final state depends only on the set of events applied, not on their
-- order or batching. Each entity (lead L, deal D, customer C) keeps what its joins need;
-- whenever an entity changes, everything it contributes is retracted with the old state and
-- added back with the new one. Deltas are summed in a Lua table and written once per
-- (key, field) at the end, so nothing is written before every event has been processed.

local P = ARGV[1]
local CFG = cjson.decode(ARGV[2])
local FACTS = cmsgpack.unpack(ARGV[3])
local MARKS = cjson.decode(ARGV[4])
local ALL, CUR, OFFSETS = P .. 'all', P .. 'cur', P .. 'offsets'
local LK, DK, CK, SEEN = P .. 'L:', P .. 'D:', P .. 'C:', P .. 'seen:'

local WM = tonumber(redis.call('GET', P .. 'wm') or '0')
local batch_wm = tonumber(ARGV[5])
if batch_wm > WM then
  WM = batch_wm
  redis.call('SET', P .. 'wm', string.format('%d', WM))
end

-- DELTA[key][field]: the double part of a pending delta, always below W_SPILL in magnitude;
-- WIDE[key][field]: the part spilled past it (rare: a batch adding 4.5e9 currency units).
local DELTA, WIDE, TTL = {}, {}, {}

local function spill(key, field, x)
  local w = WIDE[key]
  if not w then
    w = {}
    WIDE[key] = w
  end
  local prev = w[field]
  w[field] = prev and w_add(prev, w_of_number(x)) or w_of_number(x)
end

-- v: an integer below 2^52 in magnitude, so the double sum below is exact.
local function bump(key, field, v)
  local h = DELTA[key]
  if not h then
    h = {}
    DELTA[key] = h
  end
  local x = (h[field] or 0) + v
  if x >= W_SPILL or x <= -W_SPILL then
    spill(key, field, x)
    x = 0
  end
  h[field] = x
end

-- tb = {t, event_id, minute, hour, day}: an event's time, its tie-breaker and buckets.
local function tb_of(f) return { f.t, f.i, f.m, f.h, f.d } end

-- Code-point order of UTF-8 strings is their byte order; Lua's "<" uses the C locale
-- collation, which is not guaranteed to be that.
local function bytes_lt(x, y)
  local n = math.min(#x, #y)
  for i = 1, n do
    local a, b = string.byte(x, i), string.byte(y, i)
    if a ~= b then return a < b end
  end
  return #x < #y
end

local function earlier(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return bytes_lt(a[2], b[2])
end

local GRAN = { { 3, 'm:', CFG.keep.m }, { 4, 'h:', CFG.keep.h }, { 5, 'd:', CFG.keep.d } }

-- Bucket keys of a time record, cached per record (a record is usually retracted and
-- added back in the same batch). A bucket lives until its start is older than its longest
-- window plus a margin, measured against the newest event time applied (WM), plus a grace
-- period of processing time: a shuffled or historical replay therefore still answers any
-- --as-of for a while, and memory stays bounded by time, not by events.
local KEYS_OF = {}
local function keys_of(tb)
  local ks = KEYS_OF[tb]
  if ks then return ks end
  ks = {}
  for _, gr in ipairs(GRAN) do
    local start = tb[gr[1]]
    local key = P .. gr[2] .. start
    local ttl = math.max(tonumber(start) + gr[3] - WM, 0) + CFG.grace
    if (TTL[key] or 0) < ttl then TTL[key] = ttl end
    ks[#ks + 1] = key
  end
  ks[#ks + 1] = ALL
  KEYS_OF[tb] = ks
  return ks
end

-- Adds v to counter `code` of the buckets holding tb, for the total and each given dimension.
local function put(code, tb, v, r, s, g)
  if v == 0 then return end
  local fr = r and (code .. '|r|' .. r)
  local fs = s and (code .. '|s|' .. s)
  local fg = g and (code .. '|g|' .. g)
  for _, key in ipairs(keys_of(tb)) do
    bump(key, code, v)
    if fr then bump(key, fr, v) end
    if fs then bump(key, fs, v) end
    if fg then bump(key, fg, v) end
  end
end

-- Entity cache: loaded once per batch, written back once at the end.
local ENT, DIRTY = {}, {}
local function get(key)
  local s = ENT[key]
  if s == nil then
    local raw = redis.call('GET', key)
    if raw then s = cmsgpack.unpack(raw) else s = false end
    ENT[key] = s
  end
  return s
end
local function get_or_new(key)
  local s = get(key)
  if not s then
    s = {}
    ENT[key] = s
  end
  DIRTY[key] = true
  return s
end

local function lead_attrs(lead_id)
  if lead_id then
    local L = get(LK .. lead_id)
    if L and L.c then return L.r, L.s, L.g end
  end
  return 'unassigned', 'unknown', 'unknown'
end

local function emit_lead(L, sign)
  if not L then return end
  local r, s, g = 'unassigned', 'unknown', 'unknown'
  if L.c then
    r, s, g = L.r, L.s, L.g
    put('ld', L.c, sign, r, s, g)
  end
  if L.q then put('ql', L.q, sign, r, s, g) end
  if L.w then
    put('lc', L.w, sign, r, s, g)
    if L.c then put('cc', L.c, sign, r, s, g) end
  end
end

local function cycle_ms(us) return math.floor(us / 1000 + 0.5) end

-- A deal's contributions, in parts that change for different reasons.
local function emit_created(D, sign)
  if not D.c then return end
  local _, s, g = lead_attrs(D.cl)
  put('dc', D.c, sign, D.cr, s, g)
  put('e:' .. D.cs, D.c, sign, D.cr)
end

local function emit_unattributed_stages(D, sign)
  if not D.n then return end
  local rep = D.cr or 'unassigned'
  for _, ch in ipairs(D.n) do put('e:' .. ch[2], ch[1], sign, rep) end
end

local function emit_terminal(D, sign)
  if not D.x then return end
  local _, s, g = lead_attrs(D.xl or D.cl)
  if D.x == 'w' then
    put('dw', D.xt, sign, D.xr, s, g)
    put('rw', D.xt, sign * D.xa, D.xr, s, g)
    put('e:won', D.xt, sign, D.xr)
    if D.c then
      put('cn', D.xt, sign, D.xr, s, g)
      put('cs', D.xt, sign * cycle_ms(D.xt[1] - D.c[1]), D.xr, s, g)
    end
  else
    put('dl', D.xt, sign, D.xr, s, g)
  end
end

local function emit_pipeline(D, sign)
  if D.x or not D.c then return end
  local stage = D.sto or D.cs
  bump(CUR, 'po|' .. stage, sign)
  if D.av and D.av ~= 0 then bump(CUR, 'pv|' .. stage, sign * D.av) end
end

-- The parts that depend on the deal's lead attributes.
local function emit_lead_dependent(D, sign)
  emit_created(D, sign)
  emit_terminal(D, sign)
end

local function emit_cust(C, sign)
  if not C or not C.f then return end
  local lead = C.fl
  if not lead then
    local D = get(DK .. C.fd)
    if D then lead = D.cl end
  end
  local _, s, g = lead_attrs(lead)
  put('nc', C.f, sign, C.fr, s, g)
  if not C.ch then bump(CUR, 'ac', sign) end
end

local function link_deal(L, deal_id)
  L.dl = L.dl or {}
  for _, d in ipairs(L.dl) do
    if d == deal_id then return end
  end
  table.insert(L.dl, deal_id)
end

-- Customers whose first won deal is one of `deals`: their attribution follows those deals.
local function first_win_customers(deals)
  local out = {}
  for did, D in pairs(deals) do
    if D.x == 'w' then
      local C = get(CK .. D.xc)
      if C and C.fd == did then out[D.xc] = C end
    end
  end
  return out
end

-- Write-time dimension cap (see the header). DIMS[code]: the admitted-set key, its size, the
-- labels decided in this batch and the values newly admitted (written at the end).
local RESERVED = { unassigned = true, unknown = true, other = true }
local DIMS = {}
-- Admissions made by the fact being applied: undone if it turns out a conflict, so a refused
-- event takes no slot.
local NOW_N, NOW_D, NOW_V = 0, {}, {}

local function label(code, value)
  if RESERVED[value] then return value end
  local d = DIMS[code]
  if not d then
    local key = P .. 'dv:' .. code
    d = { key = key, n = redis.call('SCARD', key), label = {}, new = {} }
    DIMS[code] = d
  end
  local l = d.label[value]
  if l == nil then
    if redis.call('SISMEMBER', d.key, value) == 1 then
      l = value
    elseif d.n < CFG.cap then
      l = value
      d.n = d.n + 1
      d.new[value] = true
      NOW_N = NOW_N + 1
      NOW_D[NOW_N], NOW_V[NOW_N] = d, value
    else
      l = 'other'
    end
    d.label[value] = l
  end
  return l
end

-- Replaces the fact's raw dimension values by their labels; returns a bit mask of the folded
-- dimensions (1 rep, 2 source, 4 segment).
local function resolve(f)
  NOW_N = 0
  local folded = 0
  local l
  if f.r then
    l = label('r', f.r)
    if l ~= f.r then folded, f.r = folded + 1, l end
  end
  if f.s then
    l = label('s', f.s)
    if l ~= f.s then folded, f.s = folded + 2, l end
  end
  if f.g then
    l = label('g', f.g)
    if l ~= f.g then folded, f.g = folded + 4, l end
  end
  return folded
end

local function undo_admissions()
  for i = 1, NOW_N do
    local d, v = NOW_D[i], NOW_V[i]
    d.n = d.n - 1
    d.new[v] = nil
    d.label[v] = nil
  end
  NOW_N = 0
end

local H = {}

H.LC = function(f)
  local L = get_or_new(LK .. f.l)
  if L.c then return 'conflict' end
  local deals = {}
  for _, did in ipairs(L.dl or {}) do
    local D = get(DK .. did)
    if D then deals[did] = D end
  end
  local custs = first_win_customers(deals)
  emit_lead(L, -1)
  for _, D in pairs(deals) do emit_lead_dependent(D, -1) end
  for _, C in pairs(custs) do emit_cust(C, -1) end
  L.c, L.r, L.s, L.g = tb_of(f), f.r, f.s, f.g
  emit_lead(L, 1)
  for _, D in pairs(deals) do emit_lead_dependent(D, 1) end
  for _, C in pairs(custs) do emit_cust(C, 1) end
end

H.LQ = function(f)
  local L = get_or_new(LK .. f.l)
  local t = tb_of(f)
  if L.q and not earlier(t, L.q) then return end
  emit_lead(L, -1)
  L.q = t
  emit_lead(L, 1)
end

H.DC = function(f)
  local D = get_or_new(DK .. f.k)
  if D.c then return 'conflict' end
  local t = tb_of(f)
  local L = f.l and get_or_new(LK .. f.l) or nil
  -- A won deal without its own lead_id becomes linked to this lead: the lead may convert.
  local converts = L and D.x == 'w' and not D.xl
  local custs = first_win_customers({ [f.k] = D })
  -- Every part of the deal may change: rep of unattributed stage changes, the terminal's
  -- lead and cycle, the pipeline. The created part itself is new.
  emit_unattributed_stages(D, -1)
  emit_terminal(D, -1)
  emit_pipeline(D, -1)
  if converts then emit_lead(L, -1) end
  for _, C in pairs(custs) do emit_cust(C, -1) end
  D.c, D.cr, D.cl, D.cs = t, f.r, f.l, f.st
  if not D.at or earlier(D.at, t) then D.at, D.av = t, f.a end
  if L then link_deal(L, f.k) end
  if converts and (not L.w or earlier(D.xt, L.w)) then L.w = D.xt end
  emit_created(D, 1)
  emit_unattributed_stages(D, 1)
  emit_terminal(D, 1)
  emit_pipeline(D, 1)
  if converts then emit_lead(L, 1) end
  for _, C in pairs(custs) do emit_cust(C, 1) end
end

H.DS = function(f)
  local D = get_or_new(DK .. f.k)
  local t = tb_of(f)
  emit_pipeline(D, -1)
  if f.r then
    put('e:' .. f.st, t, 1, f.r)
  else
    D.n = D.n or {}
    table.insert(D.n, { t, f.st })
    put('e:' .. f.st, t, 1, D.cr or 'unassigned')
  end
  if not D.sst or earlier(D.sst, t) then D.sst, D.sto = t, f.st end
  if f.a and (not D.at or earlier(D.at, t)) then D.at, D.av = t, f.a end
  emit_pipeline(D, 1)
end

H.DW = function(f)
  local D = get_or_new(DK .. f.k)
  if D.x then return 'conflict' end
  local t = tb_of(f)
  local lead = f.l or D.cl
  local L = lead and get_or_new(LK .. lead) or nil
  local C = get_or_new(CK .. f.c)
  emit_terminal(D, -1)
  emit_pipeline(D, -1)
  if L then emit_lead(L, -1) end
  emit_cust(C, -1)
  D.x, D.xt, D.xr, D.xa, D.xc, D.xl = 'w', t, f.r, f.a, f.c, f.l
  if L then
    if f.l then link_deal(L, f.k) end
    if not L.w or earlier(t, L.w) then L.w = t end
  end
  if not C.f or earlier(t, C.f) then C.f, C.fd, C.fr, C.fl = t, f.k, f.r, f.l end
  emit_terminal(D, 1)
  emit_pipeline(D, 1)
  if L then emit_lead(L, 1) end
  emit_cust(C, 1)
end

H.DL = function(f)
  local D = get_or_new(DK .. f.k)
  if D.x then return 'conflict' end
  emit_pipeline(D, -1)
  D.x, D.xt, D.xr, D.xl = 'l', tb_of(f), f.r, f.l
  if f.l then link_deal(get_or_new(LK .. f.l), f.k) end
  emit_terminal(D, 1)
end

H.SP = function(f)
  local t = tb_of(f)
  put('sp', t, f.a, nil, f.s)
  put(f.cat == 'marketing' and 'sm' or 'ss', t, f.a, nil, f.s)
end

H.RR = function(f)
  local t = tb_of(f)
  put('rr', t, f.a)
  put('gm', t, f.x)
end

H.CH = function(f)
  put('ch', tb_of(f), 1)
  local C = get_or_new(CK .. f.c)
  if C.ch then return end
  emit_cust(C, -1)
  C.ch = 1
  emit_cust(C, 1)
end

H.SV = function(f)
  local t = tb_of(f)
  if f.kind == 'nps' then
    put('nn', t, 1)
    if f.p then put('np', t, 1) end
    if f.q then put('nd', t, 1) end
  else
    put('qn', t, 1)
    if f.p then put('qp', t, 1) end
  end
end

local outcome, seen_now, offsets = {}, {}, {}
local folds = { 0, 0, 0 }

for idx, f in ipairs(FACTS) do
  local stale = false
  if f.w then
    local done = offsets[f.w]
    if done == nil then
      done = tonumber(redis.call('HGET', OFFSETS, f.w) or '-1')
      offsets[f.w] = done
    end
    stale = f.o <= done
  end
  if stale then
    outcome[idx] = 'r'
  elseif seen_now[f.i] or redis.call('EXISTS', SEEN .. f.i) == 1 then
    outcome[idx] = 'd'
  else
    local folded = resolve(f)
    if H[f.y](f) == 'conflict' then
      undo_admissions()
      outcome[idx] = 'c'
    else
      outcome[idx] = 'a'
      seen_now[f.i] = true
      if folded > 0 then
        if folded % 2 == 1 then folds[1] = folds[1] + 1 end
        if folded % 4 >= 2 then folds[2] = folds[2] + 1 end
        if folded >= 4 then folds[3] = folds[3] + 1 end
      end
    end
  end
end

-- Writes only from here on.
-- One HMGET and one HSET per key (in chunks: unpack() is bounded by the Lua C stack)
-- instead of one HINCRBY per field, since the per-call cost of redis.call dominates (and
-- HINCRBY stops at 2^63). A stored counter and a delta that are both short add exactly in
-- doubles; anything longer takes the wide path.
local CHUNK = 1000
local function flush_fields(key, names, deltas, wides, first, last)
  local old = redis.call('HMGET', key, unpack(names, first, last))
  local set, gone = {}, {}
  local existed = false
  for i = first, last do
    local prev = old[i - first + 1]
    if prev then existed = true end
    local w, out = wides and wides[names[i]], nil
    if not w and (not prev or #prev <= W_SHORT) then
      local v = (tonumber(prev) or 0) + deltas[i]  -- below 1e15 + 2^52 < 2^53: exact
      if v ~= 0 then out = string.format('%d', v) end
    else
      local v = w_of_number(deltas[i])
      if w then v = w_add(v, w) end
      if prev then v = w_add(v, w_of_string(prev)) end
      if not w_is_zero(v) then out = w_tostring(v) end
    end
    if out then
      set[#set + 1] = names[i]
      set[#set + 1] = out
    elseif prev then
      gone[#gone + 1] = names[i]
    end
  end
  if #set > 0 then redis.call('HSET', key, unpack(set)) end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  return existed
end

for key, fields in pairs(DELTA) do
  local wides = WIDE[key]
  local names, deltas = {}, {}
  for field, v in pairs(fields) do
    if v ~= 0 or (wides and wides[field] and not w_is_zero(wides[field])) then
      names[#names + 1] = field
      deltas[#deltas + 1] = v
    end
  end
  local existed = false
  for first = 1, #names, CHUNK do
    existed = flush_fields(key, names, deltas, wides, first, math.min(first + CHUNK - 1, #names)) or existed
  end
  -- A key holding one of these fields already has its TTL, set when it was created with a
  -- newest-event time no later than now, so it is no shorter than what we would set.
  local ttl = TTL[key]
  if ttl and #names > 0 and not existed then redis.call('EXPIRE', key, string.format('%d', ttl)) end
end
-- The admitted sets never expire: an admitted value keeps its label for good.
for _, d in pairs(DIMS) do
  local vals = {}
  for v in pairs(d.new) do vals[#vals + 1] = v end
  for first = 1, #vals, CHUNK do
    redis.call('SADD', d.key, unpack(vals, first, math.min(first + CHUNK - 1, #vals)))
  end
end
for key in pairs(DIRTY) do
  local s = ENT[key]
  if s and next(s) ~= nil then
    redis.call('SET', key, cmsgpack.pack(s), 'EX', CFG.ettl)
  end
end
for eid in pairs(seen_now) do
  redis.call('SET', SEEN .. eid, '1', 'EX', CFG.dttl)
end
for field, off in pairs(MARKS) do
  local cur = tonumber(redis.call('HGET', OFFSETS, field) or '-1')
  if off > cur then redis.call('HSET', OFFSETS, field, string.format('%d', off)) end
end

return { table.concat(outcome), folds[1], folds[2], folds[3] }
