-- sum_windows.lua: sum bucket hashes into window totals inside Redis (read-only).
--
-- A scrape needs ~175 bucket hashes (60 minute, 24 hour, 90 day buckets plus lifetime and
-- current state), ~50k fields at 50 reps x 10 sources x 5 segments. Summing them here
-- returns ~3.5k fields instead of ~50k, which is what keeps a scrape well under 100 ms.
--
-- KEYS: the bucket keys of every group, concatenated in group order; within a group the
--       newest bucket first, so nested windows (7d, 30d, 90d) are prefixes of one list.
-- ARGV[1] number of groups; then per group: the number of cuts, then each cut (a count of
--         the group's keys, increasing; the last one is the group's size), then the number of
--         the group's last keys that are subtracted rather than added (0 for most groups: a
--         calendar window may be a whole month minus its last days, fewer keys than its days).
-- Returns one flat array {field, value, ...} per cut, in order: the sum of the group's
--         first <cut> hashes, exact: an integer reply while below 2^52 in magnitude, else a
--         decimal string (counters may exceed 2^63; wide.lua, prepended by store.py).
-- Missing keys count as empty hashes.

local call, tonumber, pairs = redis.call, tonumber, pairs  -- locals: faster than globals in the loop
local out = {}
local pos = 1
local a = 2
for _ = 1, tonumber(ARGV[1]) do
  -- acc[field]: the double part of the sum, below W_SPILL; wide[field]: the rest, if any.
  local acc, wide = {}, {}
  local ncuts = tonumber(ARGV[a])
  local first = pos
  local nminus = tonumber(ARGV[a + ncuts + 1])
  local minus_from = first + tonumber(ARGV[a + ncuts]) - nminus  -- the first subtracted key
  a = a + 1
  for _ = 1, ncuts do
    local upto = first - 1 + tonumber(ARGV[a])
    a = a + 1
    while pos <= upto do
      local h = call('HGETALL', KEYS[pos])
      local sign = pos >= minus_from and -1 or 1
      for i = 1, #h, 2 do
        local k, v = h[i], h[i + 1]
        local x
        if #v <= W_SHORT then
          x = (acc[k] or 0) + sign * tonumber(v)  -- below 2^52 + 1e15 < 2^53: exact
        else
          local w = w_of_string(v)
          if sign < 0 and #w.m > 0 then w.s = -w.s end
          wide[k] = wide[k] and w_add(wide[k], w) or w
          x = acc[k] or 0
        end
        if x >= W_SPILL or x <= -W_SPILL then
          wide[k] = wide[k] and w_add(wide[k], w_of_number(x)) or w_of_number(x)
          x = 0
        end
        acc[k] = x
      end
      pos = pos + 1
    end
    local flat, n = {}, 0
    for k, v in pairs(acc) do
      if wide[k] then
        local w = w_add(wide[k], w_of_number(v))
        if nminus == 0 or #w.m > 0 then
          flat[n + 1], flat[n + 2] = k, w_tostring(w)
          n = n + 2
        end
      elseif nminus == 0 or v ~= 0 then  -- a difference that cancels out is no field
        flat[n + 1], flat[n + 2] = k, v
        n = n + 2
      end
    end
    out[#out + 1] = flat
  end
  a = a + 1  -- past the group's subtracted-key count
end
return out
