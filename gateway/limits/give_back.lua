-- A replica gives back what it did not use of a quota lease (lease.lua), and corrects its
-- token entry to what the requests admitted from it really used.
-- KEYS[1] rpm log, KEYS[2] tpm tokens, KEYS[3] leases (concurrency), KEYS[4] quota leases
-- ARGV[1] lease id, ARGV[2] the first unused request (1-based), ARGV[3] requests granted,
-- ARGV[4] tokens to add to the lease's entry (negative: given back), ARGV[5] 1 when the lease
-- is over, ARGV[6..] concurrency slots to release
local id = ARGV[1]
local first, last = tonumber(ARGV[2]), tonumber(ARGV[3])
local BATCH = 500
for from = first, last, BATCH do
  local members = {}
  for i = from, math.min(from + BATCH - 1, last) do members[#members + 1] = id .. '#' .. i end
  redis.call('ZREM', KEYS[1], unpack(members))
end
local delta = tonumber(ARGV[4])
if delta ~= 0 and redis.call('HEXISTS', KEYS[2], id) == 1 then
  -- An entry already out of the window has nothing left to correct.
  redis.call('HINCRBY', KEYS[2], id, delta)
  redis.call('HINCRBY', KEYS[2], '#sum', delta)
end
if ARGV[5] == '1' then redis.call('ZREM', KEYS[4], id) end
if #ARGV >= 6 then redis.call('ZREM', KEYS[3], unpack(ARGV, 6)) end
return 1
