-- apply_dimensions.lua: part of the apply script (store.APPLY_PARTS); the write-time dimension cap.

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
