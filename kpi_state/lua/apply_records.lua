-- apply_records.lua: part of the apply script (store.APPLY_PARTS, concatenated in order); the
-- contract v2 engine: statements, views, and the parts of a view that move.

-- ---------------------------------------------------------------------------------------------
-- Contract v2 (docs/corrections.md): every attribute of a lead or deal is a statement
-- {tb, value, ...} that only a later one (earlier(), by time then event id) replaces. What a
-- record contributes is a pure function of its *view* (its statements resolved, joined with the
-- records it depends on). An event names the records it can change; their views are resolved
-- before and after the statement is applied, and each part whose inputs changed is retracted
-- with the old view and added with the new one. Unchanged parts cost nothing.
--
-- Stored entity fields (msgpack, kept for the entity TTL; v = 3 marks this layout, and a record
-- without v is the v1 layout, read into this one by upgrade()):
--   (a statement made by the record's creation event is {false, false, value}: its key is c)
--   lead L:     c created tb | R, S, G {t, id, rep/source/segment} | q first qualified tb |
--               X {t, id, deleted?} | dl ids of deals that ever named this lead
--   deal D:     c created tb | cs initial stage | R {t, id, owner} | L {t, id, lead id} |
--               A {t, id, amount (reporting micro-units), raw micro-units if another currency} |
--               U {t, id, rate} a later currency-only statement | S {t, id, stage} |
--               O {t, id, minute, hour, day, month, 'w'|'l'|'o', customer} outcome | X {t, id, deleted?} |
--               n stage entries {false, false, minute, hour, day, month, stage, rep or false} of
--               deal.stage_changed (a tb for their buckets, without time and event id)
--   customer C: wd ids of deals ever won for it | ch churned
-- A tb is {t (epoch us), event id, minute, hour, day, month bucket starts} (tb_of).

local UNASSIGNED, UNKNOWN = 'unassigned', 'unknown'
local NONE = {} -- an empty set or list that is never written to (spares an allocation)

-- A statement is a flat array that earlier() orders like a tb: {t, event id, a, b}; the outcome
-- keeps the whole tb in front, {t, event id, minute, hour, day, month, kind, customer}, so that it is
-- itself the tb that places the win or loss in its buckets. Flat arrays keep msgpack small.
local function stmt(tb, a, b) return { tb[1], tb[2], a, b } end
local function outcome_stmt(tb, kind, customer)
  return { tb[1], tb[2], tb[3], tb[4], tb[5], tb[6] or false, kind, customer }
end

-- A statement made by the record's creation event is stored as {false, false, a, b}: its key
-- is the record's c (the tb kept anyway), which spares an event id per attribute.
local function key_of(E, statement)
  if statement[1] then return statement end
  return E.c
end

-- Replaces the statement E[name] unless the stored one is later.
local function state(E, name, tb, a, b)
  local cur = E[name]
  if cur and not earlier(key_of(E, cur), tb) then return end
  if tb == E.c then
    E[name] = { false, false, a, b }
  else
    E[name] = stmt(tb, a, b)
  end
end
local function state_outcome(E, tb, kind, customer)
  local cur = E.O
  if cur and not earlier(cur, tb) then return end
  E.O = outcome_stmt(tb, kind, customer)
end
local function kind_of(O) return O and O[7] end

-- A stage entry of a deal.stage_changed: {false, false, minute, hour, day, month, stage, rep or false},
-- itself a tb for its buckets (keys_of reads only those); time and event id are not needed.
local function stage_entry(tb, stage, rep) return { false, false, tb[3], tb[4], tb[5], tb[6] or false, stage, rep } end

local function deleted(E) return E and E.X and E.X[3] end
local function value(statement, default)
  if statement then return statement[3] end
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
  local n = { v = 3 }
  if kind == 'L' then
    n.c, n.q, n.dl = s.c, s.q, s.dl
    if s.c then
      n.R, n.S, n.G = stmt(s.c, s.r), stmt(s.c, s.s), stmt(s.c, s.g)
    end
  elseif kind == 'D' then
    n.c, n.cs = s.c, s.cs
    if s.c then
      if s.cr then n.R = stmt(s.c, s.cr) end
      if s.cl then n.L = stmt(s.c, s.cl) end
      n.S = stmt(s.c, s.cs)
    end
    if s.at then n.A = stmt(s.at, s.av) end
    if s.sst then n.S = stmt(s.sst, s.sto) end
    if s.x then
      n.O = outcome_stmt(s.xt, s.x, s.xc)
      n.R = stmt(s.xt, s.xr)
      if s.xl then n.L = stmt(s.xt, s.xl) end
      if s.x == 'w' then n.A = stmt(s.xt, s.xa) end
    end
    if s.n then
      n.n = {}
      for i, e in ipairs(s.n) do n.n[i] = stage_entry(e[1], e[2], false) end
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
      s = { v = 3 }
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
  if U and earlier(key_of(D, A), key_of(D, U)) then return math.floor((A[4] or A[3]) * U[3] + 0.5) end
  return A[3]
end

-- Source and segment a deal takes from its lead: unknown without a lead, or a deleted one.
local function lead_dims(lead_id)
  if not lead_id then return UNKNOWN, UNKNOWN end
  local L = lead(lead_id)
  if not L or deleted(L) then return UNKNOWN, UNKNOWN end
  return value(L.S, UNKNOWN), value(L.G, UNKNOWN)
end

local function won_outcome(D)
  return D and not deleted(D) and kind_of(D.O) == 'w' and D.O or nil
end

-- -- views -------------------------------------------------------------------------------------

-- `dims`: resolve the lead's source and segment now (lead events change them). Otherwise they
-- are resolved when a part is emitted (dims_of): within a deal event the lead does not change,
-- so the lead id stands for them, and a stage change never loads the lead at all.
local function deal_view(D, dims)
  if not D or deleted(D) then return nil end
  local link = value(D.L)
  local O = D.O
  local kind = kind_of(O)
  if kind == 'o' then kind = nil end
  local v = {
    c = D.c, cs = D.cs, rep = value(D.R, UNASSIGNED), link = link, amt = amount_now(D),
    stage = value(D.S, D.cs), ok = kind, ot = kind and O,
  }
  if dims then v.s, v.g = lead_dims(link) end
  return v
end

local function dims_of(v)
  if v.s == nil then v.s, v.g = lead_dims(v.link) end
  return v.s, v.g
end

local function lead_first_win(L, lid)
  local best
  for _, did in ipairs(L.dl or NONE) do
    local D = deal(did)
    local O = won_outcome(D)
    if O and value(D.L) == lid and (not best or earlier(O, best)) then best = O end
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
  for _, did in ipairs(C.wd or NONE) do
    local D = deal(did)
    local O = won_outcome(D)
    if O and O[8] == cid and (not best or earlier(O, best)) then best, bd = O, D end
  end
  if not best then return { ch = C.ch } end
  local s, g = lead_dims(value(bd.L))
  return { f = best, rep = value(bd.R, UNASSIGNED), s = s, g = g, ch = C.ch }
end

-- -- parts of a view and what they contribute ----------------------------------------------------

local function cycle_ms(us) return math.floor(us / 1000 + 0.5) end

local function emit_created(v, sign)
  if not v or not v.c then return end
  local s, g = dims_of(v)
  put('dc', v.c, sign, v.rep, s, g)
  put('e:' .. v.cs, v.c, sign, v.rep)
end

local function emit_outcome(v, sign)
  if not v or not v.ok then return end
  local s, g = dims_of(v)
  if v.ok == 'w' then
    put('dw', v.ot, sign, v.rep, s, g)
    put('rw', v.ot, sign * v.amt, v.rep, s, g)
    put('e:won', v.ot, sign, v.rep)
    if v.c then
      put('cn', v.ot, sign, v.rep, s, g)
      put('cs', v.ot, sign * cycle_ms(v.ot[1] - v.c[1]), v.rep, s, g)
    end
  else
    put('dl', v.ot, sign, v.rep, s, g)
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
    put('e:' .. e[7], e, sign, e[8] or v.rep)
  end
end

local function emit_lead_created(v, sign)
  if v and v.c then put('ld', v.c, sign, v.r, v.s, v.g) end
end

local function emit_lead_qualified(v, sign)
  if v and v.q then put('ql', v.q, sign, v.r, v.s, v.g) end
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

-- Whether two views (nil: contributes nothing) give a part the same inputs.
-- Both views of a diff resolve their dims the same way (deal_view): lazily, the lead id
-- stands for them.
local function same_dims(a, b) return a.rep == b.rep and a.link == b.link and a.s == b.s and a.g == b.g end
local function same_created(a, b)
  if not a or not b then return not a and not b end
  return a.c == b.c and a.cs == b.cs and same_dims(a, b)
end
local function same_outcome(a, b)
  if not a or not b then return not a and not b end
  return a.ok == b.ok and a.ot == b.ot and a.amt == b.amt and a.c == b.c and same_dims(a, b)
end
local function same_pipeline(a, b)
  if not a or not b then return not a and not b end
  return a.c == b.c and a.ok == b.ok and a.stage == b.stage and a.amt == b.amt
end
local function same_conversion(a, b)
  if not a or not b then return not a and not b end
  return a.w == b.w
end
local function same_cust(a, b)
  if not a or not b then return not a and not b end
  return a.f == b.f and a.ch == b.ch and (not a.f or same_dims(a, b))
end

local function diff_deal(old, new, D, n_old)
  -- Every comparison before any emit: emitting resolves lazy dims, which would tell apart
  -- views that are the same.
  local created, outcome = same_created(old, new), same_outcome(old, new)
  if not created then
    emit_created(old, -1)
    emit_created(new, 1)
  end
  if not outcome then
    emit_outcome(old, -1)
    emit_outcome(new, 1)
  end
  if not same_pipeline(old, new) then
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

-- A lead's parts: its creation (c), its qualification (q), its conversion (w); each moves when
-- its own input or the lead's attributes (or its existence) change.
local function diff_lead(old, new)
  if not old and not new then return end
  -- true only when both exist with the same attributes: then old.x ~= new.x below is safe
  local attrs = old and new and old.r == new.r and old.s == new.s and old.g == new.g
  if not attrs or old.c ~= new.c then
    emit_lead_created(old, -1)
    emit_lead_created(new, 1)
  end
  if not attrs or old.q ~= new.q then
    emit_lead_qualified(old, -1)
    emit_lead_qualified(new, 1)
  end
  if not attrs or not same_conversion(old, new) or old.c ~= new.c then
    emit_lead_conversion(old, -1)
    emit_lead_conversion(new, 1)
  end
end

local function diff_cust(old, new)
  if not same_cust(old, new) then
    emit_cust(old, -1)
    emit_cust(new, 1)
  end
end

-- An event's change to records: `before` resolves the views of every record it names (sets of
-- lead, deal and customer ids: every record whose view the event can change); the handler then
-- applies its statements; `after` resolves the views again and moves each part that changed.
-- `dims`: a lead event, whose deals' views must carry the lead's source and segment.
local function before(leads, deals, custs, dims)
  local ol, od, on, oc = {}, {}, {}, {}
  for lid in pairs(leads) do ol[lid] = lead_view(lead(lid), lid) end
  for did in pairs(deals) do
    local D = deal(did)
    od[did] = deal_view(D, dims)
    on[did] = D and D.n and #D.n or 0
  end
  for cid in pairs(custs) do oc[cid] = cust_view(cust(cid), cid) end
  return { leads, deals, custs, ol, od, on, oc, dims }
end

local function after(snap)
  local leads, deals, custs, ol, od, on, oc = snap[1], snap[2], snap[3], snap[4], snap[5], snap[6], snap[7]
  for did in pairs(deals) do
    local D = deal(did)
    diff_deal(od[did], deal_view(D, snap[8]), D, on[did])
  end
  for lid in pairs(leads) do diff_lead(ol[lid], lead_view(lead(lid), lid)) end
  for cid in pairs(custs) do diff_cust(oc[cid], cust_view(cust(cid), cid)) end
end

-- The records a deal event can change: the deal; and, when it is won (deleted or not) or the
-- event is a win, its current and named leads (conversions) and customers (first wins). A deal
-- that is not won plays no part in any lead's or customer's view, before or after.
local function deal_scope(f)
  local D = deal(f.k)
  local leads, custs = {}, {}
  local won = D and kind_of(D.O) == 'w'
  if won or f.y == 'DW' then
    local link = D and value(D.L)
    if link then leads[link] = true end
    if f.l then leads[f.l] = true end
    if won then custs[D.O[8]] = true end
    if f.c then custs[f.c] = true end
  end
  return leads, { [f.k] = true }, custs
end

-- The records a lead event can change: the lead, the deals that named it, their customers.
local function lead_scope(lid)
  local L = lead(lid)
  local deals, custs = {}, {}
  if L then
    for _, did in ipairs(L.dl or NONE) do
      deals[did] = true
      local D = deal(did)
      if D and kind_of(D.O) == 'w' then custs[D.O[8]] = true end
    end
  end
  return { [lid] = true }, deals, custs, true
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
