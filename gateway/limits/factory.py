"""The limits backend named by `limits.backend`: the limiter and the cooldown store."""

from __future__ import annotations

from gateway.config import LimitsConfig
from gateway.cooldown import CooldownStore, MemoryCooldowns
from gateway.limits.base import Limiter
from gateway.limits.memory import MemoryLimiter


def build_limiter(config: LimitsConfig) -> Limiter:
    """`memory`: this process only; `redis`: shared by every replica through `redis_url`."""
    if config.backend == "redis":
        from gateway.limits.redis import RedisLimiter

        return RedisLimiter(config.redis_url, lease_ttl_s=config.lease_ttl_s)
    return MemoryLimiter(lease_ttl_s=config.lease_ttl_s)


def build_cooldowns(config: LimitsConfig) -> CooldownStore:
    """Cooldowns live where the limits do, so replicas sharing limits share cooldowns."""
    if config.backend == "redis":
        from gateway.cooldown_redis import RedisCooldowns

        return RedisCooldowns(config.redis_url)
    return MemoryCooldowns()
