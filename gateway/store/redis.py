"""The one Redis client of a gateway process, shared by everything that keeps state in Redis
(limits, cooldowns, usage; later the cache, runtime keys and stored responses), so that there is
one pool, one timeout policy and one retry policy per process.

Built from the `redis:` section, or from `limits.redis_url` (the older spelling) when there is
none. Connected lazily: a process that never uses Redis never opens a socket, and redis-py is
only imported when something asks for the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import GatewayConfig

if TYPE_CHECKING:
    from gateway.store.breaker import GuardedRedis

# One policy for every user: short timeouts, so that a dead Redis costs a request little.
SOCKET_TIMEOUT_S = 0.5
CONNECT_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 64
POOL_TIMEOUT_S = 2.0
HEALTH_CHECK_INTERVAL_S = 30


def connect(
    url: str,
    *,
    socket_timeout: float = SOCKET_TIMEOUT_S,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    pool_timeout: float = POOL_TIMEOUT_S,
    health_check_interval: int = HEALTH_CHECK_INTERVAL_S,
) -> GuardedRedis:
    """A pooled client with short timeouts, so that a dead Redis costs a request little.

    Under a burst the pool makes callers wait (up to `pool_timeout`) for a free connection
    rather than failing at once. A command that hits a dead connection (Redis restarted) is retried
    once, at once, on a fresh one; timeouts are not retried, because the script may have run.
    """
    from redis.asyncio import BlockingConnectionPool
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=health_check_interval,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        decode_responses=True,
    )
    from gateway.store.breaker import GuardedRedis, guard

    # Behind a circuit breaker: a dead or frozen Redis is not waited on by every request.
    client = GuardedRedis.from_pool(pool)  # owns the pool: closes it when closed
    assert isinstance(client, GuardedRedis)  # typed as the base class; it builds `cls`
    return guard(client)


def redis_url(config: GatewayConfig) -> str:
    """Where the process's Redis is: the `redis:` section, else `limits.redis_url`."""
    return config.redis.url if config.redis is not None else config.limits.redis_url


def uses_redis(config: GatewayConfig) -> bool:
    """Whether anything in this config keeps its state in Redis."""
    # A `redis:` section alone says so too: stored responses live there.
    return config.redis is not None or config.limits.backend == "redis" or config.usage.sinks.redis


class SharedRedis:
    """The process's client, made on first use and closed once, after all its users."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: GuardedRedis | None = None

    @property
    def client(self) -> GuardedRedis:
        if self._client is None:
            self._client = connect(self.url)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.breaker.aclose()
            await self._client.aclose()
            self._client = None
