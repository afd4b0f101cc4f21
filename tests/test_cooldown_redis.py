"""Cooldown stores: the same behaviour in memory and in Redis, and Redis shared by replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from gateway.config import LimitsConfig
from gateway.limits.cooldowns import CooldownStore, MemoryCooldowns
from gateway.limits.cooldowns_redis import RedisCooldowns
from gateway.limits.factory import build_cooldowns, build_limiter
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis import RedisLimiter
from gateway.store.breaker import RedisUnavailable
from gateway.store.redis import SharedRedis, connect
from tests.redis_server import RedisServer
from tests.redis_server import redis_server as redis_server  # the fixture, re-exported

MakeStore = Callable[[], CooldownStore]


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    """Stores of one kind; for Redis every store made is another replica of one shared state."""
    made: list[RedisCooldowns] = []
    if request.param == "memory":
        shared = MemoryCooldowns()
        yield lambda: shared
        return
    server: RedisServer = request.getfixturevalue("redis_server")

    def make() -> CooldownStore:
        made.append(RedisCooldowns(connect(server.url)))
        return made[-1]

    yield make
    for store in made:
        await store.aclose()


async def test_a_failure_streak_starts_a_cooldown(make_store: MakeStore) -> None:
    store = make_store()
    assert await store.health(["m1", "m2"]) == {}
    assert not await store.record_failure("m1", 3, 30)
    assert not await store.record_failure("m1", 3, 30)
    health = await store.health(["m1", "m2"])
    assert set(health) == {"m1"}
    assert health["m1"].failures == 2 and not health["m1"].cooling
    assert health["m1"].last_failure > 0
    assert await store.record_failure("m1", 3, 30)
    health = await store.health(["m1", "m2"])
    assert health["m1"].failures == 3 and health["m1"].cooling
    assert await store.cooling() == {"m1"}


async def test_a_cooldown_ends_and_the_next_failure_restarts_it(make_store: MakeStore) -> None:
    store = make_store()
    for _ in range(2):
        await store.record_failure("m1", 2, 0.3)
    assert (await store.health(["m1"]))["m1"].cooling
    await asyncio.sleep(0.35)
    # Half-open: tried again; the streak is still there, so one failure cools it at once.
    health = (await store.health(["m1"]))["m1"]
    assert not health.cooling and health.failures == 2
    assert await store.cooling() == set()
    assert await store.record_failure("m1", 2, 0.3)
    assert await store.cooling() == {"m1"}


async def test_a_success_resets_the_streak(make_store: MakeStore) -> None:
    store = make_store()
    for _ in range(3):
        await store.record_failure("m1", 3, 30)
    await store.record_failure("m2", 3, 30)
    await store.record_success("m1")
    assert set(await store.health(["m1", "m2"])) == {"m2"}
    assert await store.cooling() == set()
    assert not await store.record_failure("m1", 3, 30)  # a new streak starts from one
    await store.record_success("never-failed")


async def test_health_of_many_models_in_one_call(make_store: MakeStore) -> None:
    store = make_store()
    models = [f"m{i}" for i in range(20)]
    for i, model in enumerate(models):
        for _ in range(i % 4):
            await store.record_failure(model, 3, 30)
    health = await store.health(models)
    assert {m: h.failures for m, h in health.items()} == {
        m: i % 4 for i, m in enumerate(models) if i % 4
    }
    assert {m for m, h in health.items() if h.cooling} == {
        m for i, m in enumerate(models) if i % 4 == 3
    }


async def test_replicas_share_streaks_and_cooldowns(redis_server: RedisServer) -> None:
    a, b = RedisCooldowns(connect(redis_server.url)), RedisCooldowns(connect(redis_server.url))
    try:
        assert not await a.record_failure("m1", 3, 0.3)
        assert not await b.record_failure("m1", 3, 0.3)
        assert await a.record_failure("m1", 3, 0.3)  # the third failure, counted across both
        assert (await b.health(["m1"]))["m1"].cooling
        assert await b.cooling() == {"m1"}
        await asyncio.sleep(0.35)
        assert await a.cooling() == set()
        await b.record_success("m1")
        assert await a.health(["m1"]) == {}
    finally:
        await a.aclose()
        await b.aclose()


async def test_redis_health_is_one_command(redis_server: RedisServer) -> None:
    store = RedisCooldowns(connect(redis_server.url))
    try:
        for model in ("m1", "m2", "m3"):
            await store.record_failure(model, 1, 30)
        await store.health(["m1"])  # loads the script
        async with Redis.from_url(redis_server.url, decode_responses=True) as redis:
            before = await redis.info("commandstats")
            health = await store.health(["m1", "m2", "m3", "m4"])
            after = await redis.info("commandstats")
        assert set(health) == {"m1", "m2", "m3"}
        calls = {
            name.removeprefix("cmdstat_"): stats["calls"] - before.get(name, {"calls": 0})["calls"]
            for name, stats in after.items()
            if stats != before.get(name)
        }
        # One EVALSHA; TIME and HMGET ran inside it.
        assert calls.pop("evalsha") == 1
        assert set(calls) <= {"info", "time", "hmget"}
    finally:
        await store.aclose()


async def test_redis_keys_are_tagged_and_expire(redis_server: RedisServer) -> None:
    store = RedisCooldowns(connect(redis_server.url))
    try:
        await store.record_failure("gpt-4o", 3, 30)
        redis_server.command("SCRIPT", "FLUSH")  # scripts are loaded again when Redis lost them
        await store.record_failure("claude-haiku", 3, 30)
        async with Redis.from_url(redis_server.url, decode_responses=True) as redis:
            keys = sorted(await redis.keys("*"))
            assert keys == [
                "gw:{cooldown}:model:claude-haiku",
                "gw:{cooldown}:model:gpt-4o",
                "gw:{cooldown}:models",
            ]
            for key in keys:
                assert 86_000_000 < await redis.pttl(key) <= (86_400 + 60) * 1000
            # A streak that expired leaves the index at the next look.
            await redis.delete("gw:{cooldown}:model:gpt-4o")
            assert await store.cooling() == set()
            assert await redis.smembers("gw:{cooldown}:models") == {"claude-haiku"}
    finally:
        await store.aclose()


async def test_redis_errors_propagate(redis_server: RedisServer) -> None:
    store = RedisCooldowns(connect(redis_server.url))
    try:
        redis_server.kill()
        with pytest.raises(Exception):  # noqa: B017 - the caller catches everything and logs
            await store.health(["m1"])
        redis_server.start()
        # The client's breaker fails fast until its probe sees Redis back.
        for _ in range(60):
            try:
                assert await store.health(["m1"]) == {}
                break
            except RedisUnavailable:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("Redis never seen back")
    finally:
        await store.aclose()


async def test_factory_builds_the_configured_backend(redis_server: RedisServer) -> None:
    memory = LimitsConfig(backend="memory", lease_ttl_s=5)
    assert isinstance(build_limiter(memory, None), MemoryLimiter)
    assert isinstance(build_cooldowns(memory, None), MemoryCooldowns)
    redis = LimitsConfig(backend="redis", redis_url=redis_server.url)
    shared = SharedRedis(redis_server.url)
    limiter, cooldowns = build_limiter(redis, shared), build_cooldowns(redis, shared)
    assert isinstance(limiter, RedisLimiter) and isinstance(cooldowns, RedisCooldowns)
    try:
        await limiter.ping()
        assert await cooldowns.health(["m"]) == {}
    finally:
        await limiter.aclose()
        await cooldowns.aclose()
        await shared.aclose()


async def test_health_reads_redis_at_most_once_per_cache_interval(
    redis_server: RedisServer,
) -> None:
    """Every request reads its chain's health: a snapshot saves that round trip, while a
    cooldown still ends on time and another replica's is seen within the interval."""
    a = RedisCooldowns(connect(redis_server.url), cache_s=0.5)
    b = RedisCooldowns(connect(redis_server.url), cache_s=0.5)
    try:
        await a.record_failure("m1", 1, 0.3)
        assert (await a.health(["m1", "m2"]))["m1"].cooling
        async with Redis.from_url(redis_server.url, decode_responses=True) as redis:
            before = (await redis.info("commandstats")).get("cmdstat_evalsha", {"calls": 0})
            for _ in range(50):
                await a.health(["m1", "m2"])
            after = (await redis.info("commandstats"))["cmdstat_evalsha"]
        assert after["calls"] - before["calls"] == 0
        await asyncio.sleep(0.32)
        assert not (await a.health(["m1", "m2"]))["m1"].cooling  # ended on time, from cache
        # Another replica's new cooldown: seen once the snapshot is older than the interval.
        await a.health(["m2"])
        await b.record_failure("m2", 1, 30)
        await asyncio.sleep(0.55)
        assert (await a.health(["m2"]))["m2"].cooling
    finally:
        await a.aclose()
        await b.aclose()
