-- A request ended: release its lease and correct its token reservation to the real count.
-- KEYS[1] leases ZSET, KEYS[2] tpm tokens HASH
-- ARGV[1] lease id ('' for none), ARGV[2] reservation id ('' for none),
-- ARGV[3] actual tokens ('' to keep the reservation as it was)
-- KEYS[3..] budget counters, ARGV[4..] what to add to each (the real cost less the
-- reservation; a counter that is gone belongs to a period long over and is not revived)
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
if ARGV[2] ~= '' and ARGV[3] ~= '' then
  -- A reservation that already left the window has nothing left to correct.
  local old = redis.call('HGET', KEYS[2], ARGV[2])
  if old then
    local actual = tonumber(ARGV[3])
    redis.call('HSET', KEYS[2], ARGV[2], actual)
    redis.call('HINCRBY', KEYS[2], '#sum', actual - tonumber(old))
  end
end
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBY', KEYS[i], ARGV[i + 1])
  end
end
return 1
