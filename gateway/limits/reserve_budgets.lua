-- Redis Cluster only: reserve a request's worst-case cost in the budgets shared across keys
-- (feature, total), all in the `{budgets}` slot, after admit.lua took the key's own limits and
-- budget in the key's slot. All or nothing.
-- KEYS[1] admission marker STRING (a replay of the same admission reserves nothing twice)
-- KEYS[2..1+n] budget counters STRING nano-dollars spent and reserved in the current period
-- ARGV: n, cost, marker lifetime (ms), then per budget: its cap and how long its counter lives
--       (ms, 0: for ever)
-- Returns: the 1-based index of the first budget that refuses (0: reserved), then each
--          budget's spend and reservations (this one's included when reserved).
if redis.replicate_commands then pcall(redis.replicate_commands) end
local n = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local used = {}
local refused = 0
for i = 1, n do
  used[i] = tonumber(redis.call('GET', KEYS[1 + i]) or '0')
  if refused == 0 and used[i] + cost > tonumber(ARGV[2 + 2 * i]) then refused = i end
end
if refused == 0 and redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then
  for i = 1, n do
    used[i] = redis.call('INCRBY', KEYS[1 + i], cost)
    local lives = tonumber(ARGV[3 + 2 * i])
    if lives > 0 and redis.call('PTTL', KEYS[1 + i]) < lives then
      redis.call('PEXPIRE', KEYS[1 + i], lives)
    end
  end
end
local reply = {refused}
for i = 1, n do reply[#reply + 1] = tostring(used[i]) end
return reply
