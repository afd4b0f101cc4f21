"""The one Redis client of a gateway process, shared by everything that keeps state in Redis
(limits, cooldowns, usage, runtime keys, stored responses, the cache), so that there is one
pool, one timeout policy and one retry policy per process.

Built from the `redis:` section (`gateway.config_redis`: standalone, Cluster or Sentinel), or
from `limits.redis_url` (the older spelling, a standalone server) when there is none.
Connected lazily: a process that never uses Redis never opens a socket, and redis-py is only
imported when something asks for the client.

Every user speaks to it through commands that each touch one Cluster slot (one key, or keys
under one hash tag), so the same code runs on all three modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.config import GatewayConfig
from gateway.config_redis import RedisConfig, split_node

if TYPE_CHECKING:
    from gateway.store.breaker import GuardedClient, GuardedRedis, GuardedRedisCluster

# One policy for every user: short timeouts, so that a dead Redis costs a request little.
SOCKET_TIMEOUT_S = 0.5
CONNECT_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 64  # per server (per node with Cluster)
POOL_TIMEOUT_S = 2.0
HEALTH_CHECK_INTERVAL_S = 30
# While the circuit is open after a failover (Sentinel promoting a replica, a Cluster master
# replaced), the breaker's probe backs off to at most this, so that service resumes within a
# second of the new primary taking over.
FAILOVER_PROBE_S = 1.0


def connect(
    url: str,
    *,
    socket_timeout: float = SOCKET_TIMEOUT_S,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    pool_timeout: float = POOL_TIMEOUT_S,
    health_check_interval: int = HEALTH_CHECK_INTERVAL_S,
) -> GuardedRedis:
    """A pooled client of one standalone server, with short timeouts.

    Under a burst the pool makes callers wait (up to `pool_timeout`) for a free connection
    rather than failing at once. A command that hits a dead connection (Redis restarted) is retried
    once, at once, on a fresh one; timeouts are not retried, because the script may have run.
    """
    from redis.asyncio import BlockingConnectionPool

    from gateway.store.breaker import GuardedRedis, guard

    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        health_check_interval=health_check_interval,
        retry=_retry_once(),
        decode_responses=True,
    )
    # Behind a circuit breaker: a dead or frozen Redis is not waited on by every request.
    client = GuardedRedis.from_pool(pool)  # owns the pool: closes it when closed
    assert isinstance(client, GuardedRedis)  # typed as the base class; it builds `cls`
    return guard(client)


def connect_cluster(url: str, seeds: Sequence[str] = ()) -> GuardedRedisCluster:
    """A Redis Cluster client: `url` (and `seeds`, host:port) are nodes it learns the cluster
    from. redis-py keeps a pool per node, sends each command to its slot's master, follows
    MOVED/ASK, and re-reads the topology after a connection error or a failover. A dead
    connection is retried once, as with a standalone server."""
    from redis.asyncio.cluster import ClusterNode

    from gateway.store.breaker import GuardedRedisCluster, guard

    client = GuardedRedisCluster.from_url(
        url,
        startup_nodes=[ClusterNode(*split_node(seed)) for seed in seeds] or None,
        max_connections=MAX_CONNECTIONS,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=_retry_once(),
        decode_responses=True,
    )
    assert isinstance(client, GuardedRedisCluster)  # typed as the base class; it builds `cls`
    return guard(client, max_probe_s=FAILOVER_PROBE_S)


def connect_sentinel(config: RedisConfig) -> GuardedRedis:
    """The primary the sentinels name, followed across failovers: every new connection asks
    the sentinels where the primary is; a connection error, or a READONLY answer from a
    primary demoted to replica, drops the connection, so the next one goes to the new one."""
    from redis.asyncio.connection import BlockingConnectionPool, SSLConnection, parse_url
    from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

    from gateway.store.breaker import GuardedRedis, guard

    assert config.sentinel is not None  # checked at load

    class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
        """Sentinel's pool with the blocking pool's bound: callers wait for a connection."""

    primary: dict[str, Any] = dict(parse_url(config.url))
    for unused in ("host", "port", "path"):
        primary.pop(unused, None)
    if primary.pop("connection_class", None) is SSLConnection:
        primary["ssl"] = True
    timeouts: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
    }
    sentinels = Sentinel(
        [split_node(node) for node in config.sentinel.nodes],
        sentinel_kwargs={**timeouts, "password": config.sentinel.password},
        **timeouts,
    )
    client = sentinels.master_for(
        config.sentinel.master,
        redis_class=GuardedRedis,
        connection_pool_class=BlockingSentinelPool,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=_retry_once(),
        decode_responses=True,
        **primary,
    )
    assert isinstance(client, GuardedRedis)
    return guard(client, max_probe_s=FAILOVER_PROBE_S)


def connect_config(config: RedisConfig) -> GuardedClient:
    """The client the `redis:` section describes."""
    if config.mode == "cluster":
        return connect_cluster(config.url, config.cluster.nodes if config.cluster else [])
    if config.mode == "sentinel":
        return connect_sentinel(config)
    return connect(config.url)


def _retry_once() -> Any:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def redis_config(config: GatewayConfig) -> RedisConfig:
    """Where the process's Redis is: the `redis:` section, else `limits.redis_url`."""
    return config.redis if config.redis is not None else RedisConfig(url=config.limits.redis_url)


def uses_redis(config: GatewayConfig) -> bool:
    """Whether anything in this config keeps its state in Redis."""
    # A `redis:` section alone says so too: stored responses live there.
    return (
        config.redis is not None
        or config.limits.backend == "redis"
        or config.usage.sinks.redis
        or (config.cache is not None and config.cache.backend == "redis")
    )


class SharedRedis:
    """The process's client, made on first use and closed once, after all its users."""

    def __init__(self, config: RedisConfig | str) -> None:
        self.config = config if isinstance(config, RedisConfig) else RedisConfig(url=config)
        self._client: GuardedClient | None = None

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def cluster(self) -> bool:
        """Whether every call must keep to one slot (script calls above all)."""
        return self.config.mode == "cluster"

    @property
    def client(self) -> GuardedClient:
        if self._client is None:
            self._client = connect_config(self.config)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.breaker.aclose()
            await self._client.aclose()
            self._client = None
