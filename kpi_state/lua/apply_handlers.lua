-- apply_handlers.lua: part of the apply script (store.APPLY_PARTS); one handler per event type code.

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
