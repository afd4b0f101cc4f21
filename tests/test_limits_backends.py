"""The limiter contract, proved against both backends: memory (with a fake clock) and Redis (a
redis-server of the tests' own, several limiter instances standing in for replicas).

Windows are short here (`window_s`), so Redis, whose clock cannot be faked, is tested in
seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from gateway.limits.base import Admission, Limiter, LimiterUnavailable, LimitSpec
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis import UNDO_ADMIT, RedisLimiter, ScriptBatcher, ScriptCall
from gateway.store.breaker import RedisClient
from gateway.store.redis import connect
from tests.redis_server import RedisServer
from tests.redis_server import redis_server as redis_server  # the fixture, re-exported

SUBJECT = "key:web-app"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """Makes limiters of one kind and moves their time forward."""

    name: str
    server: RedisServer | None = None
    clock: FakeClock = field(default_factory=FakeClock)
    made: list[Limiter] = field(default_factory=list)

    def make(self, *, window_s: float = 60.0, lease_ttl_s: float = 60.0) -> Limiter:
        limiter: Limiter
        if self.server is None:
            limiter = MemoryLimiter(window_s=window_s, lease_ttl_s=lease_ttl_s, clock=self.clock)
        else:
            limiter = RedisLimiter(
                connect(self.server.url), window_s=window_s, lease_ttl_s=lease_ttl_s
            )
        self.made.append(limiter)
        return limiter

    async def sleep(self, seconds: float) -> None:
        if self.server is None:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    def redis(self) -> Redis:
        assert self.server is not None
        return Redis.from_url(self.server.url, decode_responses=True)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    server = request.getfixturevalue("redis_server") if request.param == "redis" else None
    made = Backend(request.param, server)
    yield made
    for limiter in made.made:
        await limiter.aclose()


@pytest.fixture
async def redis_backend(redis_server: RedisServer) -> AsyncIterator[Backend]:
    made = Backend("redis", redis_server)
    yield made
    for limiter in made.made:
        await limiter.aclose()


def ok(admission: Admission) -> Admission:
    assert admission.allowed, admission
    return admission


def no(admission: Admission, limit: str) -> Admission:
    assert not admission.allowed, admission
    assert admission.limit == limit, admission
    return admission


# --- rpm -----------------------------------------------------------------------------------


async def test_rpm_is_exact_under_concurrent_admissions(backend: Backend) -> None:
    # Four limiter instances (four replicas, four connection pools for Redis) race for one key.
    limiters = [backend.make() for _ in range(4 if backend.server else 1)]
    spec = LimitSpec(rpm=30)
    answers = await asyncio.gather(
        *(limiters[i % len(limiters)].admit(SUBJECT, spec, 0) for i in range(100))
    )
    assert sum(a.allowed for a in answers) == 30
    assert {a.limit for a in answers if not a.allowed} == {"requests"}
    assert all(a.retry_after is not None and a.retry_after > 0 for a in answers if not a.allowed)


async def test_no_double_burst_at_a_window_edge(backend: Backend) -> None:
    window, rpm = 1.0, 5
    limiter = backend.make(window_s=window)
    spec = LimitSpec(rpm=rpm)
    admitted: dict[str, float] = {}

    async def admit_and_record() -> bool:
        before = backend.clock.now
        answer = await limiter.admit(SUBJECT, spec, 0)
        if backend.server is None:
            if answer.allowed:
                admitted[str(len(admitted))] = before
        else:
            # Redis stamps admissions with its own TIME: read them back from the log.
            async with backend.redis() as redis:
                log = await redis.zrange(f"gw:{{{SUBJECT}}}:rpm", 0, -1, withscores=True)
            for entry in log:
                assert isinstance(entry, (tuple, list))
                admitted[str(entry[0])] = float(entry[1]) / 1000
        return answer.allowed

    # A full window's worth late in one window...
    await backend.sleep(0.8)
    assert all([await admit_and_record() for _ in range(rpm)])
    # ...and nothing more just after a fixed window would have reset.
    await backend.sleep(0.3)
    assert not await admit_and_record()
    # Keep asking for two windows: whatever gets in, no window ever holds more than rpm.
    for _ in range(40):
        await admit_and_record()
        await backend.sleep(0.05)
    times = sorted(admitted.values())
    assert len(times) > rpm  # the log moved on: later admissions were let in
    for i, start in enumerate(times):
        inside = [t for t in times[i:] if t < start + window]
        assert len(inside) <= rpm, (start, inside)


async def test_rpm_retry_after_is_true(backend: Backend) -> None:
    limiter = backend.make(window_s=1.0)
    spec = LimitSpec(rpm=3)
    for _ in range(3):
        ok(await limiter.admit(SUBJECT, spec, 0))
        await backend.sleep(0.2)
    refused = no(await limiter.admit(SUBJECT, spec, 0), "requests")
    assert refused.retry_after is not None
    # The oldest admission leaves 1 s after it was made, ~0.6 s from now.
    assert 0.3 < refused.retry_after <= 0.45
    await backend.sleep(refused.retry_after - 0.1)
    no(await limiter.admit(SUBJECT, spec, 0), "requests")
    await backend.sleep(0.1)
    ok(await limiter.admit(SUBJECT, spec, 0))


# --- tpm -----------------------------------------------------------------------------------


async def test_tpm_retry_after_is_when_enough_tokens_have_left(backend: Backend) -> None:
    limiter = backend.make(window_s=1.0)
    spec = LimitSpec(tpm=1000)
    ok(await limiter.admit(SUBJECT, spec, 600))
    await backend.sleep(0.3)
    ok(await limiter.admit(SUBJECT, spec, 300))
    await backend.sleep(0.2)
    # 900 reserved; 500 more fit only once the first 600 leave (at 1.0 s, ~0.5 s from now),
    # not when the 300 do.
    refused = no(await limiter.admit(SUBJECT, spec, 500), "tokens")
    assert refused.retry_after is not None
    assert 0.3 < refused.retry_after <= 0.55
    assert refused.tokens_remaining == 100
    await backend.sleep(refused.retry_after - 0.1)
    no(await limiter.admit(SUBJECT, spec, 500), "tokens")
    await backend.sleep(0.1)
    ok(await limiter.admit(SUBJECT, spec, 500))


async def test_settle_gives_unused_tokens_back_at_once(backend: Backend) -> None:
    limiter = backend.make()
    spec = LimitSpec(tpm=1000)
    first = ok(await limiter.admit(SUBJECT, spec, 1000))
    assert first.reserved_tokens == 1000 and first.reservation is not None
    assert first.tokens_remaining == 0
    no(await limiter.admit(SUBJECT, spec, 100), "tokens")
    await limiter.settle(SUBJECT, first, 100)
    second = ok(await limiter.admit(SUBJECT, spec, 900))
    assert second.tokens_remaining == 0
    # None keeps a reservation as it was; a larger real count takes more.
    await limiter.settle(SUBJECT, second, None)
    no(await limiter.admit(SUBJECT, spec, 1), "tokens")
    await limiter.settle(SUBJECT, first, 50)
    assert ok(await limiter.admit(SUBJECT, spec, 50)).tokens_remaining == 0


async def test_reservations_of_no_tokens_leave_the_window_like_any_other(
    backend: Backend,
) -> None:
    # A reservation settled to 0 tokens (an upstream that reported none) and one made for 0
    # (a cache hit's tpm is not asked, but a 0 estimate is): when they leave the window their
    # 0 tokens are given back. In Redis that was `HINCRBY -0`, which Redis refuses ("not an
    # integer"): every admission of the subject then failed until its keys expired.
    limiter = backend.make(window_s=0.5)
    spec = LimitSpec(tpm=1000)
    settled_to_none = ok(await limiter.admit(SUBJECT, spec, 10))
    await limiter.settle(SUBJECT, settled_to_none, 0)
    ok(await limiter.admit(SUBJECT, spec, 0))
    await backend.sleep(0.6)
    assert ok(await limiter.admit(SUBJECT, spec, 10)).tokens_remaining == 990
    await backend.sleep(0.6)
    assert ok(await limiter.admit(SUBJECT, spec, 0)).tokens_remaining == 1000


async def test_a_request_larger_than_tpm_is_too_large_and_takes_nothing(backend: Backend) -> None:
    limiter = backend.make()
    spec = LimitSpec(rpm=10, tpm=1000, max_concurrent=1)
    refused = no(await limiter.admit(SUBJECT, spec, 1001), "tokens")
    assert refused.retry_after is None
    assert refused.extra == {"too_large": "1"}
    allowed = ok(await limiter.admit(SUBJECT, spec, 1000))
    assert allowed.requests_remaining == 9 and allowed.tokens_remaining == 0


async def test_long_token_logs_are_walked_and_purged_whole(backend: Backend) -> None:
    # More reservations than the Redis script reads in one batch (500), both when it looks
    # for the one whose leaving makes room and when it purges them.
    limiter = backend.make(window_s=1.0)
    spec = LimitSpec(tpm=600)
    for burst in (5, 1):  # 500 tokens at 0 s, 100 at 0.3 s, one token per reservation
        for _ in range(burst):
            answers = await asyncio.gather(*(limiter.admit(SUBJECT, spec, 1) for _ in range(100)))
            assert all(a.allowed for a in answers)
        await backend.sleep(0.3 if burst == 5 else 0.2)
    # 100 tokens free up when the first 100 leave (at least 0.5 s from now); 550 only when the
    # 550th, in the second burst, leaves: more than 0.5 s, at most 0.8 s from now.
    soon = no(await limiter.admit(SUBJECT, spec, 100), "tokens").retry_after
    later = no(await limiter.admit(SUBJECT, spec, 550), "tokens").retry_after
    assert soon is not None and later is not None
    assert 0 < soon <= 0.51 and soon < later <= 0.81
    await backend.sleep(max(later - 0.1, 0))
    no(await limiter.admit(SUBJECT, spec, 550), "tokens")
    await backend.sleep(0.1)
    ok(await limiter.admit(SUBJECT, spec, 550))
    await backend.sleep(1.0)
    assert ok(await limiter.admit(SUBJECT, spec, 0)).tokens_remaining == 600


# --- concurrency ---------------------------------------------------------------------------


async def test_concurrency_leases_are_held_and_released(backend: Backend) -> None:
    limiter = backend.make()
    spec = LimitSpec(max_concurrent=5)
    held = [ok(await limiter.admit(SUBJECT, spec, 0)) for _ in range(5)]
    assert len({a.lease_id for a in held}) == 5 and None not in {a.lease_id for a in held}
    refused = no(await limiter.admit(SUBJECT, spec, 0), "concurrency")
    assert refused.retry_after is not None and refused.retry_after >= 1.0
    assert await limiter.in_flight(SUBJECT) == 5
    await limiter.settle(SUBJECT, held[0], None)
    assert await limiter.in_flight(SUBJECT) == 4
    ok(await limiter.admit(SUBJECT, spec, 0))
    assert await limiter.in_flight(SUBJECT) == 5
    assert await limiter.in_flight("key:someone-else") == 0


async def test_leases_expire_unless_renewed(backend: Backend) -> None:
    limiter = backend.make(lease_ttl_s=0.6)
    spec = LimitSpec(max_concurrent=2)
    kept = ok(await limiter.admit(SUBJECT, spec, 0)).lease_id
    assert kept is not None
    ok(await limiter.admit(SUBJECT, spec, 0))
    for _ in range(3):  # 0.9 s in all: past the ttl, only the renewed lease lives
        await backend.sleep(0.3)
        await limiter.renew([(SUBJECT, kept)])
    assert await limiter.in_flight(SUBJECT) == 1
    await backend.sleep(0.7)
    assert await limiter.in_flight(SUBJECT) == 0
    # An expired lease is not brought back: its slot may belong to someone else by now.
    await limiter.renew([(SUBJECT, kept), ("key:other", "no-such-lease")])
    assert await limiter.in_flight(SUBJECT) == 0


async def test_concurrency_retry_after_is_true(backend: Backend) -> None:
    limiter = backend.make(lease_ttl_s=1.2)
    spec = LimitSpec(max_concurrent=1)
    ok(await limiter.admit(SUBJECT, spec, 0))
    await backend.sleep(0.1)
    refused = no(await limiter.admit(SUBJECT, spec, 0), "concurrency")
    assert refused.retry_after is not None
    assert 1.0 < refused.retry_after <= 1.11  # the lease expires 1.1 s from now at the latest
    await backend.sleep(refused.retry_after)
    ok(await limiter.admit(SUBJECT, spec, 0))


@pytest.mark.parametrize(
    ("window_s", "lease_ttl_s", "expected"),
    [(2.0, 1.2, "requests"), (1.0, 2.5, "concurrency")],
)
async def test_the_longest_wait_is_reported(
    backend: Backend, window_s: float, lease_ttl_s: float, expected: str
) -> None:
    limiter = backend.make(window_s=window_s, lease_ttl_s=lease_ttl_s)
    spec = LimitSpec(rpm=1, max_concurrent=1)
    ok(await limiter.admit(SUBJECT, spec, 0))
    await backend.sleep(0.1)
    refused = no(await limiter.admit(SUBJECT, spec, 0), expected)
    longest = max(window_s, lease_ttl_s) - 0.1
    assert refused.retry_after is not None
    assert longest - 0.1 < refused.retry_after <= longest + 0.01


# --- all of them ---------------------------------------------------------------------------


async def test_ratelimit_header_fields(backend: Backend) -> None:
    limiter = backend.make(window_s=10.0)
    spec = LimitSpec(rpm=10, tpm=1000)
    first = ok(await limiter.admit(SUBJECT, spec, 100))
    assert (first.requests_limit, first.requests_remaining) == (10, 9)
    assert (first.tokens_limit, first.tokens_remaining) == (1000, 900)
    assert first.requests_reset_s is not None and 9.9 < first.requests_reset_s <= 10.0
    assert first.tokens_reset_s is not None and 9.9 < first.tokens_reset_s <= 10.0
    await backend.sleep(0.5)
    refused = no(await limiter.admit(SUBJECT, spec, 950), "tokens")
    assert (refused.requests_remaining, refused.tokens_remaining) == (9, 900)
    assert refused.tokens_reset_s is not None and 9.3 < refused.tokens_reset_s <= 9.5
    # No tpm, no token fields; no limits at all, no fields.
    only_rpm = ok(await limiter.admit("key:rpm-only", LimitSpec(rpm=3), 100))
    assert only_rpm.requests_remaining == 2
    assert only_rpm.tokens_limit is None and only_rpm.tokens_remaining is None
    assert only_rpm.reservation is None and only_rpm.lease_id is None
    free = ok(await limiter.admit("key:unlimited", LimitSpec(), 100))
    assert free.requests_limit is None and free.tokens_limit is None


async def test_a_refusal_takes_nothing(backend: Backend) -> None:
    limiter = backend.make()
    spec = LimitSpec(rpm=10, tpm=1000, max_concurrent=1)
    first = ok(await limiter.admit(SUBJECT, spec, 100))
    for _ in range(3):
        refused = no(await limiter.admit(SUBJECT, spec, 100), "concurrency")
        assert refused.requests_remaining == 9 and refused.tokens_remaining == 900
        assert refused.lease_id is None and refused.reservation is None
    await limiter.settle(SUBJECT, first, 100)
    second = ok(await limiter.admit(SUBJECT, spec, 100))
    assert second.requests_remaining == 8 and second.tokens_remaining == 800


async def test_memory_forgets_idle_subjects() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter(window_s=1.0, lease_ttl_s=0.5, clock=clock)
    spec = LimitSpec(rpm=1000, tpm=10**6, max_concurrent=1000)
    for i in range(200):
        await limiter.admit(f"key:{i}", spec, 10)
    clock.now += 1.5
    await limiter.admit("key:last", spec, 10)
    assert list(limiter._subjects) == ["key:last"]


# --- Redis only ----------------------------------------------------------------------------


async def test_redis_keys_share_one_slot_and_expire(redis_backend: Backend) -> None:
    limiter = redis_backend.make(window_s=5.0, lease_ttl_s=8.0)
    ok(await limiter.admit(SUBJECT, LimitSpec(rpm=5, tpm=500, max_concurrent=5), 10))
    async with redis_backend.redis() as redis:
        keys = sorted(str(k) for k in await redis.keys("*"))
        assert keys == [
            "gw:{key:web-app}:leases",
            "gw:{key:web-app}:rpm",
            "gw:{key:web-app}:tpm",
            "gw:{key:web-app}:tpm:n",
        ]
        assert len({key_slot(k.encode()) for k in keys}) == 1
        assert key_slot(keys[0].encode()) == key_slot(SUBJECT.encode())
        ttls = {k: await redis.pttl(k) for k in keys}
    assert 7_000 < ttls["gw:{key:web-app}:leases"] <= 9_000
    for key in keys[1:]:
        assert 4_000 < ttls[key] <= 6_000, (key, ttls[key])


async def test_redis_idle_subjects_vanish(redis_backend: Backend) -> None:
    limiter = redis_backend.make(window_s=0.3, lease_ttl_s=0.3)
    admission = ok(await limiter.admit(SUBJECT, LimitSpec(rpm=5, tpm=500, max_concurrent=5), 10))
    await limiter.settle(SUBJECT, admission, 5)
    await asyncio.sleep(1.5)  # the window, plus the second keys are kept past their entries
    async with redis_backend.redis() as redis:
        assert await redis.keys("*") == []


async def test_redis_recovers_from_a_lost_token_log(redis_backend: Backend) -> None:
    # If eviction took the log but left the running sum, the sum is rebuilt from the log
    # rather than blocking the subject until the keys expire.
    limiter = redis_backend.make()
    spec = LimitSpec(tpm=1000)
    ok(await limiter.admit(SUBJECT, spec, 1000))
    async with redis_backend.redis() as redis:
        await redis.delete(f"gw:{{{SUBJECT}}}:tpm")
    assert ok(await limiter.admit(SUBJECT, spec, 600)).tokens_remaining == 400


async def test_redis_undoes_an_admission_of_no_tokens_and_no_cost(redis_backend: Backend) -> None:
    # Redis Cluster's undo of an admission a shared budget refused (undo_admit.lua): 0 tokens
    # reserved and 0 cost (a free model) are given back as nothing, not as Lua's -0, which
    # INCRBY and HINCRBY refuse.
    base = f"gw:{{{SUBJECT}}}"
    keys = [f"{base}:rpm", f"{base}:tpm", f"{base}:tpm:n", f"{base}:leases"]
    marker, budget = f"{base}:admitted:a1", f"{base}:budget:key:day"
    async with redis_backend.redis() as redis:
        await redis.zadd(keys[1], {"a1": 1.0})
        await redis.hset(keys[2], mapping={"a1": 0, "#sum": 7})
        await redis.set(marker, "1")
        await redis.set(budget, 5)
        assert await UNDO_ADMIT.run(redis, [*keys, marker, budget], ["a1", 0]) == 1
        assert await redis.hgetall(keys[2]) == {"#sum": "7"}
        assert await redis.get(marker) == "undone" and await redis.get(budget) == "5"


async def test_redis_reloads_scripts_after_script_flush(redis_backend: Backend) -> None:
    assert redis_backend.server is not None
    limiter = redis_backend.make()
    spec = LimitSpec(rpm=10, tpm=1000, max_concurrent=3)
    first = ok(await limiter.admit(SUBJECT, spec, 100))
    redis_backend.server.command("SCRIPT", "FLUSH")
    second = ok(await limiter.admit(SUBJECT, spec, 100))
    assert second.requests_remaining == 8
    redis_backend.server.command("SCRIPT", "FLUSH")
    assert first.lease_id is not None and second.lease_id is not None
    await limiter.renew([(SUBJECT, first.lease_id), (SUBJECT, second.lease_id)])
    redis_backend.server.command("SCRIPT", "FLUSH")
    assert await limiter.in_flight(SUBJECT) == 2
    redis_backend.server.command("SCRIPT", "FLUSH")
    await limiter.settle(SUBJECT, first, 0)
    assert await limiter.in_flight(SUBJECT) == 1
    assert ok(await limiter.admit(SUBJECT, spec, 0)).tokens_remaining == 900


async def test_renew_is_one_script_call_per_subject(redis_backend: Backend) -> None:
    limiter = redis_backend.make(lease_ttl_s=30.0)
    spec = LimitSpec(max_concurrent=10)
    leases = []
    for subject in ("key:a", "key:b", "key:c"):
        for _ in range(2):
            lease_id = ok(await limiter.admit(subject, spec, 0)).lease_id
            assert lease_id is not None
            leases.append((subject, lease_id))
    await limiter.renew(leases)  # loads the script
    async with redis_backend.redis() as redis:
        before = await redis.info("commandstats")
        await limiter.renew(leases)
        after = await redis.info("commandstats")
        for subject, _ in leases:
            assert await redis.zcount(f"gw:{{{subject}}}:leases", "-inf", "+inf") == 2
    changed = {
        name.removeprefix("cmdstat_"): stats["calls"] - before.get(name, {"calls": 0})["calls"]
        for name, stats in after.items()
        if stats != before.get(name)
    }
    # Three EVALSHAs (no SCRIPT EXISTS/LOAD, nothing per lease); the rest ran inside them.
    assert changed.pop("evalsha") == 3
    assert set(changed) <= {"info", "time", "zremrangebyscore", "zadd", "pttl", "pexpire"}


async def _expect_unavailable(call: Callable[[], Any]) -> None:
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable):
        await call()
    assert time.monotonic() - started < 1.0


async def until_reachable(limiter: Limiter, within_s: float = 3.0) -> None:
    """Until the limiter's Redis answers again: after an outage the client's circuit breaker
    fails fast until its background probe sees Redis back (0.25 s at first)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            await limiter.ping()
            return
        except LimiterUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_redis_down_then_back(redis_backend: Backend, how: str) -> None:
    server = redis_backend.server
    assert server is not None
    limiter = redis_backend.make()
    spec = LimitSpec(rpm=100, max_concurrent=10)
    # Fill the pool with live connections, which the outage will break.
    held = await asyncio.gather(*(limiter.admit(SUBJECT, spec, 0) for _ in range(5)))
    assert all(a.allowed for a in held)
    if how == "stop":
        server.stop()
    else:
        server.kill()

    await _expect_unavailable(lambda: limiter.admit(SUBJECT, spec, 0))
    await _expect_unavailable(limiter.ping)
    await _expect_unavailable(lambda: limiter.in_flight(SUBJECT))
    started = time.monotonic()
    await limiter.settle(SUBJECT, held[0], 10)  # logged, not raised
    await limiter.renew([(SUBJECT, a.lease_id) for a in held if a.lease_id])
    assert time.monotonic() - started < 2.0

    server.start()  # same port, empty (no persistence), no scripts loaded
    await until_reachable(limiter)  # the breaker's probe notices within its interval
    answers = await asyncio.gather(*(limiter.admit(SUBJECT, spec, 0) for _ in range(10)))
    assert all(a.allowed for a in answers)
    await limiter.ping()
    assert await limiter.in_flight(SUBJECT) == 10


async def test_redis_unreachable_from_the_start(redis_backend: Backend) -> None:
    server = redis_backend.server
    assert server is not None
    server.kill()
    limiter = redis_backend.make()
    await _expect_unavailable(lambda: limiter.admit(SUBJECT, LimitSpec(rpm=1), 0))
    # A subject without limits never needs the backend.
    assert (await limiter.admit(SUBJECT, LimitSpec(), 0)).allowed
    server.start()
    await until_reachable(limiter)
    ok(await limiter.admit(SUBJECT, LimitSpec(rpm=1), 0))


class CountingBatcher(ScriptBatcher):
    """The real batcher against the real Redis, counting the pipelines it sends."""

    def __init__(self, client: RedisClient) -> None:
        super().__init__(client)
        self.pipelines: list[int] = []

    async def _pipeline(self, batch: Sequence[ScriptCall]) -> list[Any]:
        self.pipelines.append(len(batch))
        return await super()._pipeline(batch)


async def test_concurrent_script_calls_share_round_trips_and_stay_exact(
    redis_backend: Backend,
) -> None:
    limiter = redis_backend.make()
    assert isinstance(limiter, RedisLimiter)
    counting = CountingBatcher(limiter._redis)
    limiter._batcher = counting
    spec = LimitSpec(rpm=41, max_concurrent=1000)
    ok(await limiter.admit("key:warm-up", spec, 0))  # loads the scripts
    counting.pipelines.clear()
    results = await asyncio.gather(*(limiter.admit(SUBJECT, spec, 0) for _ in range(100)))
    assert sum(r.allowed for r in results) == 41
    # The first call went alone, as its caller found nothing out; the 99 made meanwhile
    # went together, each once.
    assert sum(counting.pipelines) == 99
    assert len(counting.pipelines) < 10
    # Settles queued without awaiting are all sent, then the leases are back.
    for admission in results:
        if admission.allowed:
            limiter.settle_nowait(SUBJECT, admission, 0)
    await counting.wait_idle()
    assert await limiter.in_flight(SUBJECT) == 0


async def test_a_caller_that_gives_up_does_not_disturb_its_batch(redis_backend: Backend) -> None:
    limiter = redis_backend.make()
    assert isinstance(limiter, RedisLimiter)
    spec = LimitSpec(rpm=100)
    await limiter.admit(SUBJECT, spec, 0)  # scripts loaded, connection open
    calls = [asyncio.ensure_future(limiter.admit(SUBJECT, spec, 0)) for _ in range(10)]
    await asyncio.sleep(0)
    calls[3].cancel()
    done = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(isinstance(d, Admission) and d.allowed for i, d in enumerate(done) if i != 3)


async def test_a_batch_survives_a_script_flush_between_calls(redis_backend: Backend) -> None:
    assert redis_backend.server is not None
    limiter = redis_backend.make()
    spec = LimitSpec(rpm=100, max_concurrent=100)
    first = ok(await limiter.admit(SUBJECT, spec, 0))
    redis_backend.server.command("SCRIPT", "FLUSH")
    # Admits and a settle in one batch, every script lost: all reloaded, each run once.
    results = await asyncio.gather(
        limiter.settle(SUBJECT, first, 0), *(limiter.admit(SUBJECT, spec, 0) for _ in range(5))
    )
    admissions = [r for r in results if isinstance(r, Admission)]
    assert all(a.allowed for a in admissions)
    assert sorted(a.requests_remaining or 0 for a in admissions) == [94, 95, 96, 97, 98]
    assert await limiter.in_flight(SUBJECT) == 5


async def test_memory_a_late_settle_never_corrects_a_newer_reservation() -> None:
    """A subject forgotten once its log emptied, then made again, numbers its reservations
    afresh: a settle of the old admission must not land on the new one."""
    now = [1000.0]
    limiter = MemoryLimiter(window_s=60, clock=lambda: now[0])
    spec = LimitSpec(tpm=1000)
    old = await limiter.admit("key:a", spec, 100)
    other = await limiter.admit("key:a", spec, 100)
    now[0] += 61  # both leave the window...
    await limiter.settle("key:a", other, 0)  # ...and with its log empty the subject is forgotten
    new = await limiter.admit("key:a", spec, 500)
    assert new.tokens_remaining == 500
    await limiter.settle("key:a", old, 0)  # late: must change nothing
    again = await limiter.admit("key:a", spec, 0)
    assert again.tokens_remaining == 500
    await limiter.settle("key:a", new, 50)
    assert (await limiter.admit("key:a", spec, 0)).tokens_remaining == 950
