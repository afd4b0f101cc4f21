-- One admission, atomic: purge what left the window, check every limit, then take all or nothing.
-- KEYS[1] rpm log      ZSET  id -> admission time (ms)
-- KEYS[2] tpm log      ZSET  id -> reservation time (ms)
-- KEYS[3] tpm tokens   HASH  id -> reserved tokens, plus the field '#sum'
-- KEYS[4] leases       ZSET  id -> lease expiry (ms)
-- KEYS[5] admission marker STRING (set once per admission id: a replay takes nothing twice)
-- KEYS[6..5+n] budget counters STRING nano-dollars spent and reserved in the current period
-- ARGV: rpm, tpm, max_concurrent (0: no such limit), tokens, id, window_ms, lease_ttl_ms,
--       keep_ms (extra key lifetime past the newest entry), min_concurrency_wait_ms,
--       n (budgets), cost (nano-dollars to reserve in each), then per budget: its cap and how
--       long its counter lives (ms, 0: for ever)
-- The clock is Redis TIME, so replicas need no synchronised clocks.
if redis.replicate_commands then pcall(redis.replicate_commands) end

local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local max_concurrent = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local id = ARGV[5]
local window = tonumber(ARGV[6])
local lease_ttl = tonumber(ARGV[7])
local keep = tonumber(ARGV[8])
local min_concurrency_wait = tonumber(ARGV[9])
local budgets = tonumber(ARGV[10] or '0')
local cost = tonumber(ARGV[11] or '0')

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + tonumber(time[2]) / 1000
local cutoff = now - window
local BATCH = 500

-- Extend a key's lifetime, never shorten it (another replica may hold longer-lived entries).
local function keep_alive(key, ms)
  ms = math.ceil(ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

-- The rpm and tpm logs' entries all live one window from their time, and the entry just added
-- is the newest: its lifetime is the longest any entry needs, so it is set without asking.
local function keep_window(key)
  redis.call('PEXPIRE', key, math.ceil(window + keep))
end

-- The score of the index-th (0-based) entry of a ZSET.
local function score_at(key, index)
  return tonumber(redis.call('ZRANGE', key, index, index, 'WITHSCORES')[2])
end

local wait_requests, wait_tokens, wait_concurrency = -1, -1, -1
local too_large = 0
local requests, reserved = 0, 0

if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', cutoff)
  requests = redis.call('ZCARD', KEYS[1])
  if requests >= rpm then
    -- The entry whose leaving brings the count below rpm.
    wait_requests = score_at(KEYS[1], requests - rpm) + window - now
  end
end

if tpm > 0 then
  -- Reservations that left the window give their tokens back.
  while true do
    local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', cutoff, 'LIMIT', 0, BATCH)
    if #gone == 0 then break end
    local counts = redis.call('HMGET', KEYS[3], unpack(gone))
    local freed = 0
    for i = 1, #gone do freed = freed + (tonumber(counts[i]) or 0) end
    -- Never `-freed` when it is 0: Lua's -0 reaches Redis as "-0", which HINCRBY refuses
    -- ("not an integer"), and entries of 0 tokens (a block unused, a request settled to
    -- none) are common.
    if freed ~= 0 then redis.call('HINCRBY', KEYS[3], '#sum', -freed) end
    redis.call('HDEL', KEYS[3], unpack(gone))
    redis.call('ZREM', KEYS[2], unpack(gone))
    if #gone < BATCH then break end
  end
  reserved = tonumber(redis.call('HGET', KEYS[3], '#sum') or '0')
  if tokens > tpm then
    too_large = 1
  elseif reserved + tokens > tpm then
    -- Walk the log from the oldest until enough tokens have left for this request to fit.
    local freed, offset = 0, 0
    while wait_tokens < 0 do
      local page = redis.call('ZRANGE', KEYS[2], offset, offset + BATCH - 1, 'WITHSCORES')
      if #page == 0 then break end
      local ids = {}
      for i = 1, #page, 2 do ids[#ids + 1] = page[i] end
      local counts = redis.call('HMGET', KEYS[3], unpack(ids))
      for i = 1, #ids do
        freed = freed + (tonumber(counts[i]) or 0)
        if reserved - freed + tokens <= tpm then
          wait_tokens = tonumber(page[2 * i]) + window - now
          break
        end
      end
      offset = offset + BATCH
    end
    if wait_tokens < 0 then
      -- The sum disagrees with the log (a key lost to eviction): trust the log, rebuild the
      -- sum, and the whole window frees the rest.
      local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
      local total = 0
      for i = 1, #ids, BATCH do
        local chunk = {unpack(ids, i, math.min(i + BATCH - 1, #ids))}
        local counts = redis.call('HMGET', KEYS[3], unpack(chunk))
        for j = 1, #chunk do total = total + (tonumber(counts[j]) or 0) end
      end
      redis.call('HSET', KEYS[3], '#sum', total)
      reserved = total
      if reserved + tokens > tpm then wait_tokens = window end
    end
  end
end

if max_concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  local held = redis.call('ZCARD', KEYS[4])
  if held >= max_concurrent then
    local expiry = score_at(KEYS[4], held - max_concurrent)
    wait_concurrency = math.max(expiry - now, min_concurrency_wait)
  end
end

-- Budgets: the first whose spend plus this request's worst case passes its cap refuses.
local budget_refused = 0
local budget_used = {}
for i = 1, budgets do
  budget_used[i] = tonumber(redis.call('GET', KEYS[5 + i]) or '0')
  if budget_refused == 0 and budget_used[i] + cost > tonumber(ARGV[10 + 2 * i]) then
    budget_refused = i
  end
end

local allowed = 0
if wait_requests < 0 and wait_tokens < 0 and wait_concurrency < 0 and too_large == 0
    and budget_refused == 0 then
  allowed = 1
  if budgets > 0 and redis.call('SET', KEYS[5], '1', 'NX', 'PX', math.ceil(window + keep)) then
    for i = 1, budgets do
      budget_used[i] = redis.call('INCRBY', KEYS[5 + i], cost)
      local lives = tonumber(ARGV[11 + 2 * i])
      if lives > 0 then keep_alive(KEYS[5 + i], lives) end
    end
  end
  if rpm > 0 then
    redis.call('ZADD', KEYS[1], now, id)
    requests = requests + 1
    keep_window(KEYS[1])
  end
  if tpm > 0 then
    redis.call('ZADD', KEYS[2], now, id)
    -- HSETNX: a client's retry of the same admission does not count its tokens twice.
    if redis.call('HSETNX', KEYS[3], id, tokens) == 1 then
      reserved = redis.call('HINCRBY', KEYS[3], '#sum', tokens)
    end
    keep_window(KEYS[2])
    keep_window(KEYS[3])
  end
  if max_concurrent > 0 then
    redis.call('ZADD', KEYS[4], now + lease_ttl, id)
    keep_alive(KEYS[4], lease_ttl + keep)
  end
end

-- How long until each limit is back to its initial state: the newest entry leaves the window
-- (when admitted, the newest is this admission's own: a whole window).
local requests_reset, tokens_reset = 0, 0
if rpm > 0 and requests > 0 then
  requests_reset = allowed == 1 and window or score_at(KEYS[1], -1) + window - now
end
if tpm > 0 and reserved > 0 then
  tokens_reset = allowed == 1 and window or score_at(KEYS[2], -1) + window - now
end

-- Lua numbers become integers in replies: durations go back as strings.
local reply = {
  allowed,
  tostring(wait_requests), tostring(wait_tokens), tostring(wait_concurrency), too_large,
  requests, reserved, tostring(requests_reset), tostring(tokens_reset), budget_refused,
}
for i = 1, budgets do reply[#reply + 1] = tostring(budget_used[i]) end
return reply
