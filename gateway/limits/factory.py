"""The limits backend named by `limits.backend`: the limiter and the cooldown store."""

from __future__ import annotations

from gateway.config import LimitsConfig
from gateway.limits.base import Limiter
from gateway.limits.cooldowns import CooldownStore, MemoryCooldowns
from gateway.limits.memory import MemoryLimiter
from gateway.store.redis import SharedRedis


def build_limiter(config: LimitsConfig, redis: SharedRedis | None) -> Limiter:
    """`memory`: this process only; `redis`: shared by every replica, on the process's one
    Redis client."""
    if config.backend == "redis":
        from gateway.limits.redis import RedisLimiter

        assert redis is not None, "limits.backend redis needs the process's Redis"
        return RedisLimiter(
            redis.client,
            lease_ttl_s=config.lease_ttl_s,
            cluster=redis.cluster,
            quota_lease_s=config.quota_lease_s,
        )
    return MemoryLimiter(lease_ttl_s=config.lease_ttl_s)


def build_cooldowns(config: LimitsConfig, redis: SharedRedis | None) -> CooldownStore:
    """Cooldowns live where the limits do, so replicas sharing limits share cooldowns."""
    if config.backend == "redis":
        from gateway.limits.cooldowns_redis import RedisCooldowns

        assert redis is not None, "limits.backend redis needs the process's Redis"
        return RedisCooldowns(redis.client)
    return MemoryCooldowns()
