"""Local quota leases (`gateway.limits.quota`) against a real redis-server: replicas (several
RedisLimiter instances, each its own client) admit from blocks taken from Redis, stay exact at
the limit, give back what they do not use, and go request by request near the limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.limits.base import Admission, LimiterUnavailable, LimitSpec
from gateway.limits.redis import TICK_S, RedisLimiter
from gateway.store.redis import connect
from tests.redis_server import RedisServer
from tests.redis_server import redis_server as redis_server  # the fixture, re-exported

SUBJECT = "key:busy"
LEASE_S = 1.0

MakeLimiter = Callable[..., RedisLimiter]


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[MakeLimiter]:
    made: list[RedisLimiter] = []

    def make(*, window_s: float = 60.0, lease_ttl_s: float = 60.0) -> RedisLimiter:
        limiter = RedisLimiter(
            connect(redis_server.url),
            window_s=window_s,
            lease_ttl_s=lease_ttl_s,
            quota_lease_s=LEASE_S,
        )
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def settled(limiter: RedisLimiter, admission: Admission, tokens: int | None) -> None:
    await limiter.settle(SUBJECT, admission, tokens)


async def test_a_busy_key_is_admitted_from_blocks_with_few_script_calls(
    replicas: MakeLimiter, redis: Redis
) -> None:
    limiter = replicas()
    spec = LimitSpec(rpm=1_000_000, tpm=10**9, max_concurrent=10_000)
    before = await script_calls(redis)
    for _ in range(640):
        admission = await limiter.admit(SUBJECT, spec, 100)
        assert admission.allowed
        await settled(limiter, admission, 50)
    # 640 admissions and settles: a block of 64 admissions per call, and a few slot calls.
    assert await script_calls(redis) - before <= 30
    rpm_key, _, tokens_key, _ = limiter.keys(SUBJECT)
    assert admission.requests_remaining is not None
    assert admission.requests_remaining <= 1_000_000 - 640  # never more than the truth
    await limiter.aclose()  # gives back every block
    assert await redis.zcard(rpm_key) == 640
    assert int(await redis.hget(tokens_key, "#sum") or 0) == 640 * 50


async def test_replicas_admit_exactly_the_rpm_with_blocks_active(
    replicas: MakeLimiter, redis: Redis
) -> None:
    """Three replicas, 1,200 concurrent requests against rpm 1,024: exactly 1,024 admitted,
    although blocks sat unused in replicas while others reached the limit (a refused request
    waits for the leases still out to end and asks again)."""
    limiters = [replicas() for _ in range(3)]
    spec = LimitSpec(rpm=1024)
    results = await asyncio.gather(*(limiters[i % 3].admit(SUBJECT, spec, 0) for i in range(1200)))
    assert sum(result.allowed for result in results) == 1024
    assert {result.limit for result in results if not result.allowed} == {"requests"}
    await asyncio.sleep(LEASE_S + 4 * TICK_S)  # every lease ended and given back
    assert await redis.zcard(limiters[0].keys(SUBJECT)[0]) == 1024
    assert await redis.zcard(limiters[0].quota_key(SUBJECT)) == 0


async def test_replicas_admit_exactly_the_tpm_with_blocks_active(
    replicas: MakeLimiter, redis: Redis
) -> None:
    limiters = [replicas() for _ in range(3)]
    spec = LimitSpec(tpm=20_000)
    results = await asyncio.gather(*(limiters[i % 3].admit(SUBJECT, spec, 10) for i in range(2500)))
    assert sum(result.allowed for result in results) == 2000
    await asyncio.sleep(LEASE_S + 4 * TICK_S)
    tokens_key = limiters[0].keys(SUBJECT)[2]
    assert int(await redis.hget(tokens_key, "#sum") or 0) == 20_000


async def test_quota_unused_in_one_replica_is_not_refused_to_another(
    replicas: MakeLimiter,
) -> None:
    first, second = replicas(), replicas()
    spec = LimitSpec(rpm=1024)
    assert (await first.admit(SUBJECT, spec, 0)).allowed  # took a block, used one of it
    admitted = 0
    while (await second.admit(SUBJECT, spec, 0)).allowed:
        admitted += 1
    assert admitted == 1023  # the rest of the first replica's block included


async def test_a_stopped_replica_gives_back_its_blocks_and_slots(
    replicas: MakeLimiter, redis: Redis
) -> None:
    limiter = replicas()
    spec = LimitSpec(rpm=100_000, tpm=10**8, max_concurrent=1000)
    admission = await limiter.admit(SUBJECT, spec, 700)
    assert admission.allowed
    rpm_key, _, tokens_key, leases_key = limiter.keys(SUBJECT)
    assert await redis.zcard(rpm_key) > 1  # a block is held
    await settled(limiter, admission, 300)
    await limiter.aclose()
    assert await redis.zcard(rpm_key) == 1
    assert int(await redis.hget(tokens_key, "#sum") or 0) == 300
    assert await redis.zcard(leases_key) == 0
    assert await redis.zcard(limiter.quota_key(SUBJECT)) == 0


async def test_an_idle_replica_gives_back_its_blocks_when_the_lease_ends(
    replicas: MakeLimiter, redis: Redis
) -> None:
    limiter = replicas()
    spec = LimitSpec(rpm=100_000, tpm=10**8, max_concurrent=1000)
    admission = await limiter.admit(SUBJECT, spec, 700)
    rpm_key, _, tokens_key, leases_key = limiter.keys(SUBJECT)
    await settled(limiter, admission, 300)
    await asyncio.sleep(LEASE_S + 4 * TICK_S)
    assert await redis.zcard(rpm_key) == 1
    assert int(await redis.hget(tokens_key, "#sum") or 0) == 300
    assert await redis.zcard(leases_key) == 0  # free slots went back after a lease idle
    assert await redis.zcard(limiter.quota_key(SUBJECT)) == 0


@pytest.mark.parametrize("still_held", [False, True])
async def test_a_late_settle_corrects_an_ended_lease(
    replicas: MakeLimiter, redis: Redis, still_held: bool
) -> None:
    """A request that outlives its block's lease settles into the lease's entry: from the
    subject's blocks when the replica still holds some (`still_held`: another request keeps
    a slot), straight to Redis when it holds none."""
    limiter = replicas()
    spec = LimitSpec(tpm=10**8, max_concurrent=1000 if still_held else None)
    admission = await limiter.admit(SUBJECT, spec, 700)
    await asyncio.sleep(LEASE_S + 4 * TICK_S)  # the lease ended, its unused tokens went back
    tokens_key = limiter.keys(SUBJECT)[2]
    assert int(await redis.hget(tokens_key, "#sum") or 0) == 700
    assert (SUBJECT in limiter._quotas) == still_held
    await settled(limiter, admission, 250)
    await asyncio.sleep(4 * TICK_S)
    assert int(await redis.hget(tokens_key, "#sum") or 0) == 250


async def test_a_block_whose_tokens_went_unused_leaves_the_window_cleanly(
    replicas: MakeLimiter, redis: Redis
) -> None:
    # A block's token entry corrected to 0 (its admissions used none) left the window and
    # lease.lua's purge gave back `-0` tokens, which Redis refuses: no block could be taken
    # for the subject (nor, in admit.lua, any admission) until its keys expired. Under the
    # bench's sustained load that was half the requests of a minute answered 503.
    limiter = replicas(window_s=1.0)
    spec = LimitSpec(rpm=1_000_000, tpm=10**9)
    first = await limiter.admit(SUBJECT, spec, 100)
    assert first.allowed and first.reservation is not None
    await settled(limiter, first, 0)
    _, tpm_key, tokens_key, _ = limiter.keys(SUBJECT)
    ident = first.reservation.removeprefix("~")
    for _ in range(100):  # the lease ends (1 s) and its tokens go back with the next tick
        if await redis.hget(tokens_key, ident) == "0":
            break
        await asyncio.sleep(0.05)
    assert await redis.hget(tokens_key, ident) == "0"
    await asyncio.sleep(1.2)  # the entry (timed at the lease's end) leaves the window
    again = await limiter.admit(SUBJECT, spec, 100)
    assert again.allowed
    # From a new block (lease.lua purged the entry), not request by request.
    assert again.reservation is not None and again.reservation.startswith("~")
    assert await redis.zscore(tpm_key, ident) is None
    assert await redis.hget(tokens_key, ident) is None


async def test_an_admission_late_in_a_lease_stays_counted_a_window_after_it(
    replicas: MakeLimiter, redis: Redis
) -> None:
    """A block's entries are timed at the lease's end: an admission made from it just before
    then is counted for a whole window after it was made, not from when the block was
    taken."""
    limiter = replicas(window_s=2.0)
    spec = LimitSpec(rpm=100_000)
    assert (await limiter.admit(SUBJECT, spec, 0)).allowed
    await asyncio.sleep(0.8)
    late = await limiter.admit(SUBJECT, spec, 0)
    assert late.allowed
    made_at = await redis.time()
    await limiter.aclose()  # the unused rest goes back: two entries stay
    rpm_key = limiter.keys(SUBJECT)[0]
    entries: Any = await redis.zrange(rpm_key, 0, -1, withscores=True)
    scores = [float(score) for _, score in entries]
    assert len(scores) == 2
    made_ms = made_at[0] * 1000 + made_at[1] / 1000
    assert min(scores) >= made_ms - 50  # counted until at least a window after `late`


async def test_near_the_limit_admission_goes_request_by_request(
    replicas: MakeLimiter, redis: Redis
) -> None:
    limiter = replicas()
    spec = LimitSpec(rpm=1024)
    for _ in range(1024 - 100):
        assert (await limiter.admit(SUBJECT, spec, 0)).allowed
    calls = await script_calls(redis)
    remaining = []
    while (admission := await limiter.admit(SUBJECT, spec, 0)).allowed:
        remaining.append(admission.requests_remaining)
        assert admission.requests_reset_s == 60.0  # Redis's answer, not a block's
    assert admission.limit == "requests"
    # The last hundred: each asked of Redis on its own (blocks would be at most 1/8 of what
    # is left, under the 16 worth a lease), and its count is Redis's, down to zero.
    assert remaining == list(range(99, -1, -1))
    assert await script_calls(redis) - calls >= 100
    assert await redis.zcard(limiter.quota_key(SUBJECT)) == 0


async def test_block_slots_never_let_more_than_max_concurrent_in_flight(
    replicas: MakeLimiter, redis: Redis
) -> None:
    limiters = [replicas() for _ in range(3)]
    spec = LimitSpec(max_concurrent=128)
    held = await asyncio.gather(*(limiters[i % 3].admit(SUBJECT, spec, 0) for i in range(300)))
    admitted = [(i, result) for i, result in enumerate(held) if result.allowed]
    assert 0 < len(admitted) <= 128
    leases_key = limiters[0].keys(SUBJECT)[3]
    assert await redis.zcard(leases_key) <= 128
    for i, result in admitted:
        await limiters[i % 3].settle(SUBJECT, result, None)
    await asyncio.sleep(LEASE_S + 6 * TICK_S)  # free slots go back once idle for a lease
    assert await redis.zcard(leases_key) == 0


async def test_blocks_are_not_used_once_redis_is_gone(
    replicas: MakeLimiter, redis_server: RedisServer
) -> None:
    """Killed Redis: the kept connection sees it closed, and the blocks taken before are not
    used, so that `on_backend_error` decides at once."""
    limiter = replicas()
    spec = LimitSpec(rpm=100_000)
    assert (await limiter.admit(SUBJECT, spec, 0)).allowed
    redis_server.kill()
    await asyncio.sleep(0.1)
    with pytest.raises(LimiterUnavailable):
        await limiter.admit(SUBJECT, spec, 0)
