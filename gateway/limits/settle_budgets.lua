-- Redis Cluster only: correct the reservations in the budgets shared across keys (the
-- `{budgets}` slot) to a request's real cost; settle.lua does the key's own slot.
-- KEYS: budget counters; ARGV: what to add to each (the real cost less the reservation). A
-- counter that is gone belongs to a period long over and is not revived.
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], ARGV[i]) end
end
return 1
