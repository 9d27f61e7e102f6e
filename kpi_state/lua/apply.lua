-- apply.lua: apply one batch of validated CRM events to the KPI state, atomically.
--
-- One script in parts, concatenated in this order by store.py (APPLY_PARTS) since a Redis
-- script cannot load another: wide.lua (exact wide integers), apply.lua (arguments, buckets,
-- counters), apply_records.lua (the contract v2 engine), apply_dimensions.lua (the write-time
-- dimension cap), apply_handlers.lua (one handler per event type), apply_run.lua (the batch
-- loop, then every write).
--
-- KEYS: none. Every key is "<ARGV[1]><kind>:<id>" in one namespace (standalone Redis,
--       not Cluster: the joins touch keys that cannot be declared up front).
-- ARGV[1] key prefix, e.g. "kpi:" (KeyLayout.prefix; the names below it: kpi_state/keys.py)
-- ARGV[2] JSON config {keep={m=,h=,d=,mo=} seconds a bucket is kept after its start, measured
--         against the newest event time; grace = extra seconds of processing time;
--         dttl = de-duplication TTL; ettl = entity TTL; cap = distinct values admitted per
--         dimension}
-- ARGV[3] msgpack array of facts (built by facts.py; msgpack decodes ~2x faster than JSON), each:
--         i event_id, y type code, t occurred_at (epoch us), m/h/d/mo bucket starts (epoch s, as
--         strings: number-to-string conversion in Lua costs a microsecond per key),
--         type fields (l lead, k deal, c customer, r rep, s source, g segment,
--         a amount in micro-units, ar/rt raw micro-units and rate of an amount in another
--         currency, cu rate of a currency-only deal.updated, st stage, x margin micro-units,
--         cat, p/q flags),
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

-- tb = {t, event_id, minute, hour, day, month}: an event's time, its tie-breaker and buckets.
-- The month is absent (or false) in a tb stored before month buckets existed (the v1 layout,
-- upgrade() in apply_records.lua): such a record adds to and retracts from no month bucket,
-- consistently.
local function tb_of(f) return { f.t, f.i, f.m, f.h, f.d, f.mo } end

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

local GRAN = {
  { 3, 'm:', CFG.keep.m }, { 4, 'h:', CFG.keep.h }, { 5, 'd:', CFG.keep.d }, { 6, 'mo:', CFG.keep.mo },
}

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
    if start then
      local key = P .. gr[2] .. start
      local ttl = math.max(tonumber(start) + gr[3] - WM, 0) + CFG.grace
      if (TTL[key] or 0) < ttl then TTL[key] = ttl end
      ks[#ks + 1] = key
    end
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
