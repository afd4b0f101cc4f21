-- A replica takes a block of a subject's quota, to admit from in memory for a short lease.
-- KEYS[1] rpm log, KEYS[2] tpm log, KEYS[3] tpm tokens, KEYS[4] leases (concurrency),
-- KEYS[5] quota leases ZSET  lease id -> when it ends (ms)
-- KEYS[6] recall STRING: set while a request was refused for concurrency (leased.lua)
-- ARGV: rpm, tpm, max_concurrent (0: no such limit), then what is wanted of each (0: nothing),
--       the least worth having of each, lease id, lease_ms, window_ms, keep_ms,
--       concurrency lease ttl_ms, split (a block is at most 1/split of what is left),
--       divisor (and at most 1/divisor of the limit)
-- All or nothing: every part wanted is granted, or none (near its limit a subject is admitted
-- request by request, by admit.lua).
-- Requests are entries `<id>#<i>` of the rpm log and the tokens one entry `<id>` of the tpm
-- log, all timed at the lease's END: every admission made from the block lies before it, so
-- each stays counted for at least a window after it was made. Concurrency slots are leases
-- `<id>#c<i>`, renewed and given back like any other.
-- Returns: granted (0/1), requests, tokens, slots granted, then the rpm count, the tokens
-- reserved and the leases held after it (what every replica's admissions and blocks take),
-- and 1 when free slots are recalled (every replica gives back those it does not use).
if redis.replicate_commands then pcall(redis.replicate_commands) end

local rpm, tpm, max_concurrent = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want = {tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
local least = {tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])}
local id = ARGV[10]
local lease = tonumber(ARGV[11])
local window = tonumber(ARGV[12])
local keep = tonumber(ARGV[13])
local ttl = tonumber(ARGV[14])
local split = tonumber(ARGV[15])
local divisor = tonumber(ARGV[16])

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local cutoff = now - window
local ends = now + lease
local BATCH = 500

local function keep_alive(key, ms)
  ms = math.ceil(ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

-- A block: what is wanted, but at most 1/divisor of the limit and 1/split of what is left.
local function block(part, limit, used, div)
  if want[part] <= 0 then return 0 end
  local size = math.min(want[part], math.floor(limit / div), math.floor((limit - used) / split))
  if size < least[part] then return -1 end
  return size
end

local requests, reserved, held = 0, 0, 0
local grant = {0, 0, 0}
local granted = 1

if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  requests = redis.call('ZCARD', KEYS[1])
  grant[1] = block(1, rpm, requests, divisor)
end
if tpm > 0 then
  while true do  -- as admit.lua: reservations that left the window give their tokens back
    local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff, 'LIMIT', 0, BATCH)
    if #gone == 0 then break end
    local counts = redis.call('HMGET', KEYS[3], unpack(gone))
    local freed = 0
    for i = 1, #gone do freed = freed + (tonumber(counts[i]) or 0) end
    if freed ~= 0 then redis.call('HINCRBY', KEYS[3], '#sum', -freed) end  -- not -0: admit.lua
    redis.call('HDEL', KEYS[3], unpack(gone))
    redis.call('ZREM', KEYS[2], unpack(gone))
    if #gone < BATCH then break end
  end
  reserved = tonumber(redis.call('HGET', KEYS[3], '#sum') or '0')
  grant[2] = block(2, tpm, reserved, divisor)
end
if max_concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  held = redis.call('ZCARD', KEYS[4])
  -- Slots are a gauge, not a window's count: a block may be a larger share of the limit.
  grant[3] = block(3, max_concurrent, held, math.max(1, math.floor(divisor / 4)))
end
for part = 1, 3 do
  if grant[part] < 0 then granted = 0 end
end

if granted == 1 then
  if grant[1] > 0 then
    for first = 1, grant[1], BATCH do
      local entries = {}
      for i = first, math.min(first + BATCH - 1, grant[1]) do
        entries[#entries + 1] = ends
        entries[#entries + 1] = id .. '#' .. i
      end
      redis.call('ZADD', KEYS[1], unpack(entries))
    end
    requests = requests + grant[1]
    keep_alive(KEYS[1], window + lease + keep)
  end
  if grant[2] > 0 then
    redis.call('ZADD', KEYS[2], ends, id)
    redis.call('HSET', KEYS[3], id, grant[2])
    reserved = redis.call('HINCRBY', KEYS[3], '#sum', grant[2])
    keep_alive(KEYS[2], window + lease + keep)
    keep_alive(KEYS[3], window + lease + keep)
  end
  if grant[3] > 0 then
    for first = 1, grant[3], BATCH do
      local entries = {}
      for i = first, math.min(first + BATCH - 1, grant[3]) do
        entries[#entries + 1] = now + ttl
        entries[#entries + 1] = id .. '#c' .. i
      end
      redis.call('ZADD', KEYS[4], unpack(entries))
    end
    held = held + grant[3]
    keep_alive(KEYS[4], ttl + keep)
  end
  if grant[1] > 0 or grant[2] > 0 then
    redis.call('ZADD', KEYS[5], ends, id)
    keep_alive(KEYS[5], lease + keep)
  end
else
  grant = {0, 0, 0}
end
return {granted, grant[1], grant[2], grant[3], requests, reserved, held,
        redis.call('EXISTS', KEYS[6])}
