"""A circuit breaker in front of the process's Redis, so that a dead or frozen Redis costs a
request microseconds, not a socket timeout.

After a command fails for want of Redis (a connection error, a timeout), the breaker opens:
every command fails at once with `RedisUnavailable` (a redis `ConnectionError`, so every user
already treats it as the backend being down: limits fall back to `on_backend_error`, usage
records wait in their queue). While open, one `PING` at a time probes Redis in the background,
first after 0.25 s, then at a growing interval up to 5 s; when one answers, the breaker closes.
No request waits on a probe.

The log says when an outage starts (one line), how it goes (one summary a minute) and when it
ends (one line), instead of one warning per refused call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import ClusterDownError, RedisClusterUnreachableError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("gateway.redis")

FIRST_PROBE_S = 0.25
MAX_PROBE_S = 5.0
SUMMARY_S = 60.0

# What says Redis could not be reached (a script error, say, is Redis answering). A Cluster
# whose slots are not all served (a master down, its failover not done) counts too.
UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    RedisClusterUnreachableError,
)


class RedisUnavailable(RedisConnectionError):
    """Refused without asking: the breaker is open."""


class ClusterUnreachable(RedisConnectionError):
    """No node of the Cluster could be reached. redis-py raises that as an exception outside
    its RedisError tree; it is re-raised as this, a connection error, so that every user
    treats it as it treats a standalone Redis being down."""


def _as_redis_error(exc: BaseException) -> BaseException:
    if isinstance(exc, RedisClusterUnreachableError):
        unreachable = ClusterUnreachable(str(exc))
        unreachable.__cause__ = exc
        return unreachable
    return exc


class Breaker:
    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_probe_s: float = MAX_PROBE_S
    ) -> None:
        self._clock = clock
        self._max_probe_s = max_probe_s
        self.down_since: float | None = None  # None: closed, Redis is taken to be up
        self._interval = FIRST_PROBE_S
        self._refused = 0  # calls refused since the last summary
        self._summary_at = 0.0
        self._probe: asyncio.Task[None] | None = None
        self.ping: Callable[[], Awaitable[Any]] | None = None  # set by the client

    @property
    def open(self) -> bool:
        return self.down_since is not None

    def check(self) -> None:
        """Raise RedisUnavailable while open (and start a probe when one is due)."""
        if self.down_since is None:
            return
        self._refused += 1
        now = self._clock()
        if now - self._summary_at >= SUMMARY_S:
            self._summary_at = now
            log.warning(
                "redis still unreachable",
                extra={"down_s": round(now - self.down_since, 1), "refused": self._refused},
            )
            self._refused = 0
        self._start_probe()
        raise RedisUnavailable("Redis is unreachable; not asked (circuit open)")

    def failed(self, exc: BaseException) -> None:
        if self.down_since is not None:
            return
        now = self._clock()
        self.down_since = now
        self._summary_at = now
        self._interval = FIRST_PROBE_S
        self._refused = 0
        log.warning("redis unreachable; failing fast until it answers", extra={"error": str(exc)})
        self._start_probe()

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        down_s = self._clock() - self.down_since
        self.down_since = None
        log.warning(
            "redis reachable again", extra={"down_s": round(down_s, 2), "refused": self._refused}
        )
        self._refused = 0

    def _start_probe(self) -> None:
        if self._probe is not None or self.ping is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._probe = loop.create_task(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        try:
            while self.down_since is not None and self.ping is not None:
                await asyncio.sleep(self._interval)
                try:
                    await self.ping()
                except UNREACHABLE:
                    self._interval = min(self._interval * 2, self._max_probe_s)
                    continue
                except Exception:  # Redis answered, if with an error: it is reachable
                    pass
                self.succeeded()
        finally:
            self._probe = None

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()


class GuardedRedis(Redis):
    """The redis client with the breaker in front of every command and pipeline."""

    breaker: Breaker

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.breaker.check()
        try:
            result = await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        except UNREACHABLE as exc:
            self.breaker.failed(exc)
            raise
        self.breaker.succeeded()
        return result

    async def _unguarded_ping(self) -> Any:
        return await super().execute_command("PING")  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = GuardedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.breaker = self.breaker
        return pipe


class GuardedPipeline(Pipeline):
    breaker: Breaker

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.breaker.check()
        try:
            result = await super().execute(raise_on_error)
        except UNREACHABLE as exc:
            self.breaker.failed(exc)
            raise
        self.breaker.succeeded()
        return result


class GuardedRedisCluster(RedisCluster):
    """The Cluster client with the breaker in front of every command and pipeline. redis-py
    routes each command to its slot's master and follows MOVED/ASK and topology changes; the
    breaker opens when a command still cannot be served after that."""

    breaker: Breaker

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self.breaker.check()
        try:
            result = await super().execute_command(*args, **kwargs)
        except UNREACHABLE as exc:
            self.breaker.failed(exc)
            raise _as_redis_error(exc) from exc
        self.breaker.succeeded()
        return result

    async def _unguarded_ping(self) -> Any:
        return await super().execute_command("PING")

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        # mypy reads an attribute ClusterPipeline sets in __init__ as abstract.
        pipe = GuardedClusterPipeline(self, transaction)  # type: ignore[abstract]
        pipe.breaker = self.breaker
        return pipe


class GuardedClusterPipeline(ClusterPipeline):
    breaker: Breaker

    async def execute(
        self, raise_on_error: bool = True, allow_redirections: bool = True
    ) -> list[Any]:
        self.breaker.check()
        try:
            result = await super().execute(raise_on_error, allow_redirections)
        except UNREACHABLE as exc:
            self.breaker.failed(exc)
            raise _as_redis_error(exc) from exc
        self.breaker.succeeded()
        return result


GuardedClient = GuardedRedis | GuardedRedisCluster
# What the users of the shared client take: either kind speaks the same commands.
RedisClient = Redis | RedisCluster


_Client = TypeVar("_Client", GuardedRedis, GuardedRedisCluster)


def guard(client: _Client, max_probe_s: float = MAX_PROBE_S) -> _Client:
    client.breaker = Breaker(max_probe_s=max_probe_s)
    client.breaker.ping = client._unguarded_ping
    return client
