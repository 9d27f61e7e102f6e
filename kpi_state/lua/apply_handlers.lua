-- apply_handlers.lua: part of the apply script (store.APPLY_PARTS); one handler per event type code.
-- Each returns 'conflict' before changing anything, or nothing.

local H = {}

local function create_lead(L, f)
  local t = tb_of(f)
  L.c = t
  state(L, 'R', t, f.r)
  state(L, 'S', t, f.s)
  state(L, 'G', t, f.g)
end

H.LC = function(f)
  local known = lead(f.l)
  if known and known.c then return 'conflict' end
  if not known then -- the usual case: nothing names this lead yet, nothing else can move
    local L = lead(f.l, true)
    create_lead(L, f)
    diff_lead(nil, lead_view(L, f.l))
    return
  end
  local snap = before(lead_scope(f.l))
  create_lead(lead(f.l, true), f)
  after(snap)
end

H.LU = function(f)
  local snap = before(lead_scope(f.l))
  local L, t = lead(f.l, true), tb_of(f)
  if f.r then state(L, 'R', t, f.r) end
  if f.s then state(L, 'S', t, f.s) end
  if f.g then state(L, 'G', t, f.g) end
  after(snap)
end

local function lead_deletion(flag)
  return function(f)
    local snap = before(lead_scope(f.l))
    state(lead(f.l, true), 'X', tb_of(f), flag)
    after(snap)
  end
end
H.LX = lead_deletion(true)
H.LR = lead_deletion(false)

-- Qualification changes the lead's own view only.
H.LQ = function(f)
  local snap = before({ [f.l] = true }, NONE, NONE)
  local L, t = lead(f.l, true), tb_of(f)
  if not L.q or earlier(t, L.q) then L.q = t end
  after(snap)
end

local function create_deal(D, f)
  local t = tb_of(f)
  D.c, D.cs = t, f.st
  state(D, 'S', t, f.st)
  if f.r then state(D, 'R', t, f.r) end
  state_amount(D, t, f)
  state_lead(D, t, f)
end

H.DC = function(f)
  local known = deal(f.k)
  if known and known.c then return 'conflict' end
  if not known then -- the usual case: a new deal is open, so no lead or customer can move
    local D = deal(f.k, true)
    create_deal(D, f)
    diff_deal(nil, deal_view(D), D, 0)
    return
  end
  local snap = before(deal_scope(f))
  create_deal(deal(f.k, true), f)
  after(snap)
end

-- A stage change moves the deal's own view only (stage, amount, one more entry).
H.DS = function(f)
  local snap = before(NONE, { [f.k] = true }, NONE)
  local D, t = deal(f.k, true), tb_of(f)
  state(D, 'S', t, f.st)
  state_amount(D, t, f)
  D.n = D.n or {}
  D.n[#D.n + 1] = stage_entry(t, f.st, f.r or false)
  after(snap)
end

H.DW = function(f)
  local snap = before(deal_scope(f))
  local D, t = deal(f.k, true), tb_of(f)
  state_outcome(D, t, 'w', f.c)
  state(D, 'R', t, f.r)
  state_amount(D, t, f)
  state_lead(D, t, f)
  add_id(cust(f.c, true), 'wd', f.k)
  after(snap)
end

H.DL = function(f)
  local snap = before(deal_scope(f))
  local D, t = deal(f.k, true), tb_of(f)
  state_outcome(D, t, 'l')
  state(D, 'R', t, f.r)
  state_lead(D, t, f)
  after(snap)
end

H.DU = function(f)
  local snap = before(deal_scope(f))
  local D, t = deal(f.k, true), tb_of(f)
  if f.r then state(D, 'R', t, f.r) end
  state_amount(D, t, f)
  if f.cu then state(D, 'U', t, f.cu) end
  state_lead(D, t, f)
  after(snap)
end

H.DO = function(f)
  local snap = before(deal_scope(f))
  local D, t = deal(f.k, true), tb_of(f)
  state_outcome(D, t, 'o')
  if f.st then state(D, 'S', t, f.st) end
  if f.r then state(D, 'R', t, f.r) end
  after(snap)
end

local function deal_deletion(flag)
  return function(f)
    local snap = before(deal_scope(f))
    state(deal(f.k, true), 'X', tb_of(f), flag)
    after(snap)
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
  local snap = before(NONE, NONE, { [f.c] = true })
  cust(f.c, true).ch = 1
  after(snap)
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
