-- apply_run.lua: part of the apply script (store.APPLY_PARTS); the batch loop, then every write.

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
