-- wide.lua: exact signed integers of any size. store.py prepends this file to apply.lua and
-- sum_windows.lua (a Redis script cannot load another), so it defines locals only.
--
-- Lua numbers are doubles, exact for integers below 2^53 only, and string.format('%d') wraps
-- past 2^63. Counters therefore add in doubles only while that is provably exact: every
-- single contribution is below 2^52 in magnitude (events.py bounds amounts; cycle times are
-- bounded by the timestamp bounds), a running double sum is moved into a wide integer as
-- soon as it reaches W_SPILL = 2^52, so a double sum never exceeds 2^53; a stored counter of
-- more than W_SHORT characters (possibly 1e15 or more) is read as a wide integer.
-- A wide integer is {s = 1 or -1, m = magnitude in limbs of base 1e7, least significant
-- first, no zero top limb}; zero is {s = 1, m = {}}. Only counters past 2^52 take this path.

local W_BASE = 1e7
local W_SPILL = 2 ^ 52
local W_SHORT = 15  -- at most 15 characters: |value| < 1e15, exact as a double with room to add

-- x: an integer-valued double (exact, |x| < 2^53).
local function w_of_number(x)
  local s = 1
  if x < 0 then s, x = -1, -x end
  local m = {}
  while x > 0 do
    local r = math.fmod(x, W_BASE)  -- fmod is exact
    m[#m + 1] = r
    x = (x - r) / W_BASE  -- an exact multiple of W_BASE: the quotient is exact
  end
  return { s = s, m = m }
end

-- str: a decimal integer as stored by these scripts ("-" and digits).
local function w_of_string(str)
  local s, first = 1, 1
  if string.sub(str, 1, 1) == '-' then s, first = -1, 2 end
  local m = {}
  local last = #str
  while last >= first do
    local from = math.max(first, last - 6)
    m[#m + 1] = tonumber(string.sub(str, from, last))
    last = from - 1
  end
  while #m > 0 and m[#m] == 0 do m[#m] = nil end
  if #m == 0 then s = 1 end
  return { s = s, m = m }
end

local function w_cmp_mag(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  for i = #a, 1, -1 do
    if a[i] ~= b[i] then return a[i] < b[i] and -1 or 1 end
  end
  return 0
end

local function w_add_mag(a, b)
  local r, carry = {}, 0
  for i = 1, math.max(#a, #b) do
    local v = (a[i] or 0) + (b[i] or 0) + carry
    if v >= W_BASE then r[i], carry = v - W_BASE, 1 else r[i], carry = v, 0 end
  end
  if carry > 0 then r[#r + 1] = carry end
  return r
end

-- a - b for magnitudes a >= b.
local function w_sub_mag(a, b)
  local r, borrow = {}, 0
  for i = 1, #a do
    local v = a[i] - (b[i] or 0) - borrow
    if v < 0 then r[i], borrow = v + W_BASE, 1 else r[i], borrow = v, 0 end
  end
  while #r > 0 and r[#r] == 0 do r[#r] = nil end
  return r
end

local function w_add(a, b)
  if a.s == b.s then return { s = a.s, m = w_add_mag(a.m, b.m) } end
  local c = w_cmp_mag(a.m, b.m)
  if c == 0 then return { s = 1, m = {} } end
  if c > 0 then return { s = a.s, m = w_sub_mag(a.m, b.m) } end
  return { s = b.s, m = w_sub_mag(b.m, a.m) }
end

local function w_is_zero(a) return #a.m == 0 end

local function w_tostring(a)
  local n = #a.m
  if n == 0 then return '0' end
  local parts = { a.s < 0 and '-' or '', string.format('%d', a.m[n]) }
  for i = n - 1, 1, -1 do parts[#parts + 1] = string.format('%07d', a.m[i]) end
  return table.concat(parts)
end
