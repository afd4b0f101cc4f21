-- Leases held now (expiry after Redis TIME). KEYS[1] leases ZSET.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.3f', now), '+inf')
