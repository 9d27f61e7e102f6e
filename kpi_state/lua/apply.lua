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

-- ---------------------------------------------------------------------------------------------
-- Contract v2 (docs/corrections.md): every attribute of a lead or deal is a statement
-- {tb, value, ...} that only a later one (earlier(), by time then event id) replaces. What a
-- record contributes is a pure function of its *view* (its statements resolved, joined with the
-- records it depends on). An event names the records it can change; their views are resolved
-- before and after the statement is applied, and each part whose inputs changed is retracted
-- with the old view and added with the new one. Unchanged parts cost nothing.
--
-- Stored entity fields (msgpack, kept for the entity TTL; v = 2 marks this layout):
--   lead L:     c created tb | R, S, G {tb, rep/source/segment} | q first qualified tb |
--               X {tb, deleted?} | dl ids of deals that ever named this lead
--   deal D:     c created tb | cs initial stage | R {tb, owner} | L {tb, lead id} |
--               A {tb, amount (reporting micro-units), raw micro-units if another currency} |
--               U {tb, rate} a later currency-only statement | S {tb, stage} |
--               O {tb, 'w'|'l'|'o', customer} outcome | X {tb, deleted?} |
--               n stage entries {tb, stage, rep or false} of deal.stage_changed
--   customer C: wd ids of deals ever won for it | ch churned
-- A tb is {t (epoch us), event id, minute, hour, day bucket starts} (tb_of).

local UNASSIGNED, UNKNOWN = 'unassigned', 'unknown'

-- Replaces the statement E[name] by {tb, ...} unless the stored one is later.
local function state(E, name, tb, a, b)
  local cur = E[name]
  if cur and not earlier(cur[1], tb) then return end
  E[name] = { tb, a, b }
end

local function deleted(E) return E and E.X and E.X[2] end
local function value(stmt, default)
  if stmt then return stmt[2] end
  return default
end

local function add_id(E, list, id)
  local ids = E[list]
  if not ids then
    ids = {}
    E[list] = ids
  end
  for _, x in ipairs(ids) do
    if x == id then return end
  end
  ids[#ids + 1] = id
end

-- Entities written before contract v2 are read into this layout once (best effort: a v1 deal
-- kept no record of stage entries that named their rep, see docs/corrections.md).
local function upgrade(kind, s)
  if s.v then return s end
  local n = { v = 2 }
  if kind == 'L' then
    n.c, n.q, n.dl = s.c, s.q, s.dl
    if s.c then
      n.R, n.S, n.G = { s.c, s.r }, { s.c, s.s }, { s.c, s.g }
    end
  elseif kind == 'D' then
    n.c, n.cs = s.c, s.cs
    if s.c then
      if s.cr then n.R = { s.c, s.cr } end
      if s.cl then n.L = { s.c, s.cl } end
      n.S = { s.c, s.cs }
    end
    if s.at then n.A = { s.at, s.av } end
    if s.sst then n.S = { s.sst, s.sto } end
    if s.x then
      n.O = { s.xt, s.x, s.xc }
      n.R = { s.xt, s.xr }
      if s.xl then n.L = { s.xt, s.xl } end
      if s.x == 'w' then n.A = { s.xt, s.xa } end
    end
    if s.n then
      n.n = {}
      for i, e in ipairs(s.n) do n.n[i] = { e[1], e[2], false } end
    end
  else
    n.ch = s.ch
    if s.fd then n.wd = { s.fd } end
  end
  return n
end

local function entity(prefix, kind, id, create)
  local key = prefix .. id
  local s = ENT[key]
  if s == nil then
    local raw = redis.call('GET', key)
    if raw then s = upgrade(kind, cmsgpack.unpack(raw)) else s = false end
    ENT[key] = s
  end
  if create then
    if not s then
      s = { v = 2 }
      ENT[key] = s
    end
    DIRTY[key] = true
  end
  return s
end
local function lead(id, create) return entity(LK, 'L', id, create) end
local function deal(id, create) return entity(DK, 'D', id, create) end
local function cust(id, create) return entity(CK, 'C', id, create) end

-- The deal's amount now, in reporting micro-units: its latest amount statement, re-expressed by
-- a later currency-only statement (the same number in that currency).
local function amount_now(D)
  local A, U = D.A, D.U
  if not A then return 0 end
  if U and earlier(A[1], U[1]) then return math.floor((A[3] or A[2]) * U[2] + 0.5) end
  return A[2]
end

-- Source and segment a deal takes from its lead: unknown without a lead, or a deleted one.
local function lead_dims(lead_id)
  if not lead_id then return UNKNOWN, UNKNOWN end
  local L = lead(lead_id)
  if not L or deleted(L) then return UNKNOWN, UNKNOWN end
  return value(L.S, UNKNOWN), value(L.G, UNKNOWN)
end

local function won_outcome(D)
  return D and not deleted(D) and D.O and D.O[2] == 'w' and D.O or nil
end

-- -- views -------------------------------------------------------------------------------------

local function deal_view(D)
  if not D or deleted(D) then return nil end
  local link = value(D.L)
  local s, g = lead_dims(link)
  local O = D.O
  local kind = O and O[2]
  if kind == 'o' then kind = nil end
  return {
    c = D.c, cs = D.cs, rep = value(D.R, UNASSIGNED), s = s, g = g, amt = amount_now(D),
    stage = value(D.S, D.cs), ok = kind, ot = kind and O[1],
  }
end

local function lead_first_win(L, lid)
  local best
  for _, did in ipairs(L.dl or {}) do
    local D = deal(did)
    local O = won_outcome(D)
    if O and value(D.L) == lid and (not best or earlier(O[1], best)) then best = O[1] end
  end
  return best
end

local function lead_view(L, lid)
  if not L or deleted(L) then return nil end
  return {
    c = L.c, q = L.q, w = lead_first_win(L, lid),
    r = value(L.R, UNASSIGNED), s = value(L.S, UNKNOWN), g = value(L.G, UNKNOWN),
  }
end

local function cust_view(C, cid)
  if not C then return nil end
  local best, bd
  for _, did in ipairs(C.wd or {}) do
    local D = deal(did)
    local O = won_outcome(D)
    if O and O[3] == cid and (not best or earlier(O[1], best)) then best, bd = O[1], D end
  end
  if not best then return { ch = C.ch } end
  local s, g = lead_dims(value(bd.L))
  return { f = best, rep = value(bd.R, UNASSIGNED), s = s, g = g, ch = C.ch }
end

-- -- parts of a view and what they contribute ----------------------------------------------------

local function cycle_ms(us) return math.floor(us / 1000 + 0.5) end

local function emit_created(v, sign)
  if not v or not v.c then return end
  put('dc', v.c, sign, v.rep, v.s, v.g)
  put('e:' .. v.cs, v.c, sign, v.rep)
end

local function emit_outcome(v, sign)
  if not v or not v.ok then return end
  if v.ok == 'w' then
    put('dw', v.ot, sign, v.rep, v.s, v.g)
    put('rw', v.ot, sign * v.amt, v.rep, v.s, v.g)
    put('e:won', v.ot, sign, v.rep)
    if v.c then
      put('cn', v.ot, sign, v.rep, v.s, v.g)
      put('cs', v.ot, sign * cycle_ms(v.ot[1] - v.c[1]), v.rep, v.s, v.g)
    end
  else
    put('dl', v.ot, sign, v.rep, v.s, v.g)
  end
end

local function emit_pipeline(v, sign)
  if not v or not v.c or v.ok then return end
  bump(CUR, 'po|' .. v.stage, sign)
  if v.amt ~= 0 then bump(CUR, 'pv|' .. v.stage, sign * v.amt) end
end

-- Stage entries first..last of a deal.stage_changed list: the rep it names, else the owner.
local function emit_stages(v, n, sign, first, last)
  if not v or not n then return end
  for i = first, last do
    local e = n[i]
    put('e:' .. e[2], e[1], sign, e[3] or v.rep)
  end
end

local function emit_lead_base(v, sign)
  if not v then return end
  if v.c then put('ld', v.c, sign, v.r, v.s, v.g) end
  if v.q then put('ql', v.q, sign, v.r, v.s, v.g) end
end

local function emit_lead_conversion(v, sign)
  if not v or not v.w then return end
  put('lc', v.w, sign, v.r, v.s, v.g)
  if v.c then put('cc', v.c, sign, v.r, v.s, v.g) end
end

local function emit_cust(v, sign)
  if not v or not v.f then return end
  put('nc', v.f, sign, v.rep, v.s, v.g)
  if not v.ch then bump(CUR, 'ac', sign) end
end

-- -- diffs ---------------------------------------------------------------------------------------

local function both_nil_or(a, b, same)
  if not a or not b then return not a and not b end
  return same(a, b)
end

local function same_dims(a, b) return a.rep == b.rep and a.s == b.s and a.g == b.g end

local function diff_deal(old, new, D, n_old)
  if not both_nil_or(old, new, function(a, b) return a.c == b.c and a.cs == b.cs and same_dims(a, b) end) then
    emit_created(old, -1)
    emit_created(new, 1)
  end
  if not both_nil_or(old, new, function(a, b)
    return a.ok == b.ok and a.ot == b.ot and a.amt == b.amt and a.c == b.c and same_dims(a, b)
  end) then
    emit_outcome(old, -1)
    emit_outcome(new, 1)
  end
  if not both_nil_or(old, new, function(a, b)
    return a.c == b.c and a.ok == b.ok and a.stage == b.stage and a.amt == b.amt
  end) then
    emit_pipeline(old, -1)
    emit_pipeline(new, 1)
  end
  local n = D and D.n
  local n_new = n and #n or 0
  if old and new and old.rep == new.rep then
    emit_stages(new, n, 1, n_old + 1, n_new)
  else
    emit_stages(old, n, -1, 1, n_old)
    emit_stages(new, n, 1, 1, n_new)
  end
end

local function diff_lead(old, new)
  local same_base = both_nil_or(old, new, function(a, b)
    return a.c == b.c and a.q == b.q and a.r == b.r and a.s == b.s and a.g == b.g
  end)
  if not same_base then
    emit_lead_base(old, -1)
    emit_lead_base(new, 1)
  end
  if not same_base or not both_nil_or(old, new, function(a, b) return a.w == b.w end) then
    emit_lead_conversion(old, -1)
    emit_lead_conversion(new, 1)
  end
end

local function diff_cust(old, new)
  if not both_nil_or(old, new, function(a, b)
    return a.f == b.f and a.ch == b.ch and (not a.f or same_dims(a, b))
  end) then
    emit_cust(old, -1)
    emit_cust(new, 1)
  end
end

-- Applies `mutate` (which returns 'conflict' before changing anything, or nothing) to the
-- records named in `leads`, `deals`, `custs` (sets of ids: every record whose view the event
-- can change), and moves each changed part of their views.
local function change(leads, deals, custs, mutate)
  local ol, od, on, oc = {}, {}, {}, {}
  for lid in pairs(leads) do ol[lid] = lead_view(lead(lid), lid) end
  for did in pairs(deals) do
    local D = deal(did)
    od[did] = deal_view(D)
    on[did] = D and D.n and #D.n or 0
  end
  for cid in pairs(custs) do oc[cid] = cust_view(cust(cid), cid) end
  if mutate() == 'conflict' then return 'conflict' end
  for did in pairs(deals) do
    local D = deal(did)
    diff_deal(od[did], deal_view(D), D, on[did])
  end
  for lid in pairs(leads) do diff_lead(ol[lid], lead_view(lead(lid), lid)) end
  for cid in pairs(custs) do diff_cust(oc[cid], cust_view(cust(cid), cid)) end
end

-- The records a deal event can change: the deal, its current and named leads, its current and
-- named customers.
local function deal_scope(f)
  local D = deal(f.k)
  local leads, custs = {}, {}
  if D then
    local link = value(D.L)
    if link then leads[link] = true end
    if D.O and D.O[2] == 'w' then custs[D.O[3]] = true end
  end
  if f.l then leads[f.l] = true end
  if f.c then custs[f.c] = true end
  return leads, { [f.k] = true }, custs
end

-- The records a lead event can change: the lead, the deals that named it, their customers.
local function lead_scope(lid)
  local L = lead(lid)
  local deals, custs = {}, {}
  if L then
    for _, did in ipairs(L.dl or {}) do
      deals[did] = true
      local D = deal(did)
      if D and D.O and D.O[2] == 'w' then custs[D.O[3]] = true end
    end
  end
  return { [lid] = true }, deals, custs
end

-- A deal's lead statement, and the link the lead keeps to find its deals.
local function state_lead(D, t, f)
  if not f.l then return end
  state(D, 'L', t, f.l)
  add_id(lead(f.l, true), 'dl', f.k)
end

local function state_amount(D, t, f)
  if f.a then state(D, 'A', t, f.a, f.ar) end
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

local function lead_event(f, mutate)
  local leads, deals, custs = lead_scope(f.l)
  return change(leads, deals, custs, function() return mutate(lead(f.l, true), tb_of(f)) end)
end

local function deal_event(f, mutate)
  local leads, deals, custs = deal_scope(f)
  return change(leads, deals, custs, function() return mutate(deal(f.k, true), tb_of(f)) end)
end

H.LC = function(f)
  local L = lead(f.l)
  if L and L.c then return 'conflict' end
  return lead_event(f, function(L2, t)
    L2.c = t
    state(L2, 'R', t, f.r)
    state(L2, 'S', t, f.s)
    state(L2, 'G', t, f.g)
  end)
end

H.LU = function(f)
  return lead_event(f, function(L, t)
    if f.r then state(L, 'R', t, f.r) end
    if f.s then state(L, 'S', t, f.s) end
    if f.g then state(L, 'G', t, f.g) end
  end)
end

local function lead_deletion(flag)
  return function(f)
    return lead_event(f, function(L, t) state(L, 'X', t, flag) end)
  end
end
H.LX = lead_deletion(true)
H.LR = lead_deletion(false)

-- Qualification changes the lead's own view only.
H.LQ = function(f)
  return change({ [f.l] = true }, {}, {}, function()
    local L, t = lead(f.l, true), tb_of(f)
    if not L.q or earlier(t, L.q) then L.q = t end
  end)
end

H.DC = function(f)
  local D = deal(f.k)
  if D and D.c then return 'conflict' end
  return deal_event(f, function(D2, t)
    D2.c, D2.cs = t, f.st
    state(D2, 'S', t, f.st)
    if f.r then state(D2, 'R', t, f.r) end
    state_amount(D2, t, f)
    state_lead(D2, t, f)
  end)
end

-- A stage change moves the deal's own view only (stage, amount, one more entry).
H.DS = function(f)
  return change({}, { [f.k] = true }, {}, function()
    local D, t = deal(f.k, true), tb_of(f)
    state(D, 'S', t, f.st)
    state_amount(D, t, f)
    D.n = D.n or {}
    D.n[#D.n + 1] = { t, f.st, f.r or false }
  end)
end

H.DW = function(f)
  return deal_event(f, function(D, t)
    state(D, 'O', t, 'w', f.c)
    state(D, 'R', t, f.r)
    state_amount(D, t, f)
    state_lead(D, t, f)
    add_id(cust(f.c, true), 'wd', f.k)
  end)
end

H.DL = function(f)
  return deal_event(f, function(D, t)
    state(D, 'O', t, 'l')
    state(D, 'R', t, f.r)
    state_lead(D, t, f)
  end)
end

H.DU = function(f)
  return deal_event(f, function(D, t)
    if f.r then state(D, 'R', t, f.r) end
    state_amount(D, t, f)
    if f.cu then state(D, 'U', t, f.cu) end
    state_lead(D, t, f)
  end)
end

H.DO = function(f)
  return deal_event(f, function(D, t)
    state(D, 'O', t, 'o')
    if f.st then state(D, 'S', t, f.st) end
    if f.r then state(D, 'R', t, f.r) end
  end)
end

local function deal_deletion(flag)
  return function(f)
    return deal_event(f, function(D, t) state(D, 'X', t, flag) end)
  end
end
H.DX = deal_deletion(true)
H.DR = deal_deletion(false)

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
  return change({}, {}, { [f.c] = true }, function() cust(f.c, true).ch = 1 end)
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
