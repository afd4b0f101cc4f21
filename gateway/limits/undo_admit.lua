-- Redis Cluster only: give back at once what admit.lua took for an admission that a budget
-- across keys then refused (reserve_budgets.lua, in another slot), so that the refused request
-- counts against nothing.
-- KEYS[1] rpm log, KEYS[2] tpm log, KEYS[3] tpm tokens, KEYS[4] leases, KEYS[5] admission
-- marker, KEYS[6..] the key's budget counters; ARGV[1] the admission id, ARGV[2] the cost it
-- reserved in each budget.
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local tokens = redis.call('HGET', KEYS[3], ARGV[1])
if tokens then
  redis.call('HDEL', KEYS[3], ARGV[1])
  -- Not when 0: Lua's -0 reaches Redis as "-0", which HINCRBY refuses.
  if tonumber(tokens) ~= 0 then redis.call('HINCRBY', KEYS[3], '#sum', -tonumber(tokens)) end
end
redis.call('ZREM', KEYS[4], ARGV[1])
-- The marker says the budgets were reserved; once undone it says so, so that a second undo
-- (or a replayed admission) cannot take or give back twice.
if redis.call('GET', KEYS[5]) == '1' then
  redis.call('SET', KEYS[5], 'undone', 'KEEPTTL')
  local cost = tonumber(ARGV[2])
  for i = 6, #KEYS do
    if cost ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], -cost) end
  end
end
return 1
