"""Sinks and stores from the `usage:` config section."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import UsageConfig
from gateway.usage.jsonl import JsonlSink, MiB
from gateway.usage.sinks import UsageSink

if TYPE_CHECKING:
    from redis.asyncio import Redis


def build_sinks(usage: UsageConfig, redis: Redis | None = None) -> list[UsageSink]:
    """The sinks `usage.sinks` turns on. `redis`: the client for the Redis sink (required when
    `usage.sinks.redis` is true; the sink does not close it)."""
    sinks: list[UsageSink] = []
    config = usage.sinks
    if config.jsonl:
        sinks.append(
            JsonlSink(
                config.jsonl,
                max_bytes=int(config.jsonl_max_mb * MiB),
                rotate_daily=config.jsonl_rotate_daily,
            )
        )
    if config.redis:
        if redis is None:
            raise ValueError("usage.sinks.redis is on but no Redis client was given")
        from gateway.usage.redis_sink import RedisUsageSink  # only when on: see __init__

        sinks.append(RedisUsageSink(redis, stream_maxlen=config.redis_stream_maxlen))
    return sinks
