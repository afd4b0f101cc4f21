-- How long until the first quota lease still out ends (ms; -1: none). A lease whose holder
-- gave nothing back `grace_ms` after its end is taken to be gone with its replica.
-- KEYS[1] quota leases ZSET, KEYS[2] recall STRING
-- ARGV[1] grace_ms, ARGV[2] recall_ms: when not 0, free slots are recalled for that long
-- (a request was refused for concurrency: every replica's next block call gives its free
-- slots back)
if redis.replicate_commands then pcall(redis.replicate_commands) end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
if tonumber(ARGV[2]) > 0 then redis.call('SET', KEYS[2], '1', 'PX', math.ceil(tonumber(ARGV[2]))) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return '-1' end
return tostring(math.max(tonumber(first[2]) - now, 0))
