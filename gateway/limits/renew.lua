-- Push the expiry of a subject's live leases to now + ttl (Redis TIME).
-- KEYS[1] leases ZSET; ARGV[1] lease_ttl_ms, ARGV[2] keep_ms, ARGV[3..] lease ids
-- Returns how many leases were renewed.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local ttl = tonumber(ARGV[1])
-- An expired lease is not revived: its slot may already belong to another request.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local renewed = 0
for i = 3, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, ARGV[i])
end
if renewed > 0 then
  local ms = math.ceil(ttl + tonumber(ARGV[2]))
  if redis.call('PTTL', KEYS[1]) < ms then redis.call('PEXPIRE', KEYS[1], ms) end
end
return renewed
