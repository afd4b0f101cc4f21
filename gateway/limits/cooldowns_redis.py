"""Cooldowns in Redis, shared by every replica, judged by Redis `TIME`.

Keys, all under one hash tag so that a multi-model read is one script in one Cluster slot:
- `gw:{cooldown}:model:<name>`  HASH failures, last_failure, cooling_until (seconds, Redis TIME)
- `gw:{cooldown}:models`        SET of the models that have a streak (no SCAN needed)
Each expires `2 * seconds + 1 day` after the model's last failure, so forgotten models vanish.
Errors propagate: callers treat an unreadable store as "every model healthy".
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from gateway.limits.cooldowns import CooldownStore, ModelHealth
from gateway.store.breaker import RedisClient, RedisUnavailable
from gateway.store.scripts import LuaScript

_HEALTH = LuaScript(
    """
-- KEYS: model hashes. Returns Redis TIME, then failures, last_failure, cooling_until per key.
local time = redis.call('TIME')
local out = {string.format('%.6f', tonumber(time[1]) + tonumber(time[2]) / 1e6)}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'failures', 'last_failure', 'cooling_until')
  out[#out + 1] = v[1] or ''
  out[#out + 1] = v[2] or ''
  out[#out + 1] = v[3] or ''
end
return out
"""
)

_RECORD_FAILURE = LuaScript(
    """
-- KEYS[1] the model's hash, KEYS[2] the set of models with a streak
-- ARGV: threshold, seconds, model name, key lifetime (ms). Returns 1 when a cooldown starts.
if redis.replicate_commands then pcall(redis.replicate_commands) end
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1e6
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'last_failure', string.format('%.6f', now))
local started = 0
if failures >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'cooling_until', string.format('%.6f', now + tonumber(ARGV[2])))
  started = 1
end
local ttl = tonumber(ARGV[4])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return started
"""
)

_FORGET = LuaScript(
    """
-- KEYS[1] the set of models with a streak, KEYS[2..] model hashes; ARGV the models' names.
-- Drops from the set the models whose streak expired, unless one started again meanwhile.
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('SREM', KEYS[1], ARGV[i - 1]) end
end
return 1
"""
)

DAY_S = 86_400.0


# Redis TIME at the fetch, and each failing model's (failures, cooling_until, last_failure).
_Snapshot = tuple[float, dict[str, tuple[int, float, float]]]


class RedisCooldowns(CooldownStore):
    """Failure streaks and cooldowns every replica shares."""

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "gw",
        cache_s: float = 1.0,
    ) -> None:
        self._redis = client  # the process's shared client: closed by its owner, not here
        self._base = f"{prefix}:{{cooldown}}"
        self.index_key = f"{self._base}:models"
        # Every request reads its chain's health; a snapshot reused for `cache_s` saves that
        # round trip on nearly all of them. Another replica's cooldown is seen at most that
        # late; this replica's own failures and successes drop the snapshot at once.
        self.cache_s = cache_s
        self._cache: dict[tuple[str, ...], tuple[float, _Snapshot]] = {}

    def key(self, model: str) -> str:
        return f"{self._base}:model:{model}"

    async def health(self, models: Sequence[str]) -> dict[str, ModelHealth]:
        """The chain's health, from a snapshot at most `cache_s` old. Whether a model is
        cooling is judged now, on Redis's clock as of the snapshot plus the time since, so
        a cooldown still ends on time when read from the snapshot."""
        chain = tuple(models)
        local_now = time.monotonic()
        cached = self._cache.get(chain)
        if cached is None or local_now - cached[0] >= self.cache_s:
            if len(self._cache) > 1024:  # chains come from config: a handful; bound it anyway
                self._cache.clear()
            try:
                cached = (local_now, await self._fetch(chain))
            except RedisUnavailable:
                # The circuit is open: every model counts as healthy, as with no cooldowns at
                # all, and nothing is logged per request (the breaker logs the outage once).
                return {}
            self._cache[chain] = cached
        fetched_at, (redis_then, streaks) = cached
        redis_now = redis_then + (local_now - fetched_at)
        return {
            model: ModelHealth(failures, redis_now < cooling_until, last_failure)
            for model, (failures, cooling_until, last_failure) in streaks.items()
        }

    async def _fetch(self, models: Sequence[str]) -> _Snapshot:
        """One round trip for every model: Redis TIME and each model's streak."""
        if not models:
            return (0.0, {})
        reply = await _HEALTH.run(self._redis, [self.key(m) for m in models], ())
        streaks: dict[str, tuple[int, float, float]] = {}
        for i, model in enumerate(models):
            failures, last_failure, cooling_until = reply[1 + 3 * i : 4 + 3 * i]
            if failures == "":
                continue  # never failed, or reset: healthy
            streaks[model] = (
                int(failures),
                float(cooling_until) if cooling_until != "" else 0.0,
                float(last_failure) if last_failure != "" else 0.0,
            )
        return float(reply[0]), streaks

    async def record_failure(self, model: str, threshold: int, seconds: float) -> bool:
        self._cache.clear()
        lifetime_ms = math.ceil((2 * seconds + DAY_S) * 1000)
        args = (threshold, seconds, model, lifetime_ms)
        started = await _RECORD_FAILURE.run(self._redis, (self.key(model), self.index_key), args)
        return bool(int(started))

    async def record_success(self, model: str) -> None:
        self._cache.clear()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.key(model))
            pipe.srem(self.index_key, model)
            await pipe.execute()

    async def cooling(self) -> set[str]:
        members = await self._redis.smembers(self.index_key)
        models = sorted(m if isinstance(m, str) else m.decode() for m in members)
        redis_now, streaks = await self._fetch(models)
        stale = [m for m in models if m not in streaks]  # their streak expired
        if stale:
            keys = [self.index_key, *(self.key(m) for m in stale)]
            await _FORGET.run(self._redis, keys, stale)
        return {m for m, (_, cooling_until, _) in streaks.items() if redis_now < cooling_until}
