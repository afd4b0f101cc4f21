"""The Redis usage sink and store, against a real redis-server of the tests' own."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.usage import (
    MemoryUsageStore,
    RedisUsageSink,
    RedisUsageStore,
    UsageQuery,
    UsageRecord,
    UsageRecorder,
    UsageUnavailable,
    format_ts,
)
from gateway.usage.layout import agg_key
from tests.redis_server import RedisServer, redis_server
from tests.test_usage_recorder import wait_until
from tests.test_usage_records import make_record

__all__ = ["redis_server"]  # the fixture, imported for the tests below

NOW = datetime(2025, 3, 10, 15, 30, tzinfo=UTC)
METRICS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url, socket_timeout=5, socket_connect_timeout=2)
    yield redis
    await redis.aclose()


def random_records(n: int, seed: int = 3) -> list[UsageRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = NOW - timedelta(days=rng.randrange(3), minutes=rng.randrange(600))
        status = rng.choice([200, 200, 200, 200, 429, 499, 502])
        out.append(
            make_record(
                ts=format_ts(ts),
                request_id=f"r{i}",
                feature=rng.choice(["chat", "search", "triage"]),
                model=rng.choice(["m1", "m2", None]) if status != 200 else rng.choice(["m1", "m2"]),
                tier=rng.choice(["fast", "premium"]),
                key=rng.choice(["k1", "k2", "k3", None]),
                user=rng.choice(["alice", "bob", "carol", None]),
                status=status,
                prompt_tokens=rng.randrange(0, 500),
                completion_tokens=rng.randrange(0, 200),
                cached_tokens=rng.randrange(0, 50),
                cache_write_tokens=rng.randrange(0, 30),
                reasoning_tokens=rng.randrange(0, 20),
                cost_usd=rng.random() / 100,
                latency_ms=rng.lognormvariate(6, 0.7),
                ttft_ms=rng.lognormvariate(5, 0.5) if rng.random() < 0.6 else None,
            )
        )
    return out


def brute_force(
    records: list[UsageRecord], group_by: tuple[str, ...], key: str | None
) -> dict[tuple[Any, ...], dict[str, Any]]:
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rec in records:
        if key is not None and rec.key != key:
            continue
        label = tuple(rec.day if dim == "day" else getattr(rec, dim) for dim in group_by)
        row = out.setdefault(label, {m: 0 for m in METRICS} | {"cost_usd": 0.0})
        row["requests"] += 1
        row["errors"] += rec.status >= 400
        for m in METRICS[2:]:
            row[m] += getattr(rec, m)
        row["cost_usd"] += rec.cost_usd
    return out


async def test_stream_is_trimmed_to_about_maxlen_and_holds_the_records(client: Redis) -> None:
    sink = RedisUsageSink(client, stream_maxlen=100)
    records = [make_record(request_id=f"r{i}") for i in range(1000)]
    for start in range(0, 1000, 50):
        await sink.write(records[start : start + 50])
    length = await client.xlen("gateway:usage")
    assert 100 <= length < 300  # MAXLEN ~: trimmed in whole radix-tree nodes
    last: Any = await client.xrevrange("gateway:usage", count=1)
    assert UsageRecord.from_json(last[0][1][b"record"]) == records[-1]
    ttl = await client.ttl(agg_key(NOW.strftime("%Y-%m-%d"), False))
    assert 399 * 86400 < ttl <= 400 * 86400


@pytest.mark.parametrize(
    "group_by",
    [
        (),
        ("day",),
        ("feature", "model"),
        ("tier", "key"),
        ("user",),
        ("model", "user"),
        ("day", "feature", "model", "tier", "key", "user"),
    ],
)
@pytest.mark.parametrize("key_filter", [None, "k1"])
async def test_aggregates_answer_any_grouping_like_the_records_do(
    client: Redis, group_by: tuple[str, ...], key_filter: str | None
) -> None:
    records = random_records(600)
    sink = RedisUsageSink(client)
    memory = MemoryUsageStore(clock=NOW.timestamp)
    for start in range(0, len(records), 97):
        await sink.write(records[start : start + 97])
    for rec in records:
        memory.add(rec)

    q = UsageQuery.from_params({"group_by": ",".join(group_by)}, now=NOW)
    from_redis = await RedisUsageStore(client).query(q, key_filter)
    from_memory = await memory.query(q, key_filter)
    assert from_redis["source"] == "redis" and from_memory["source"] == "memory"
    assert from_redis["group_by"] == list(group_by)

    expected = brute_force(records, group_by, key_filter)
    for body in (from_redis, from_memory):
        got = {tuple(row[d] for d in group_by): row for row in body["data"]}
        assert set(got) == set(expected)
        for label, want in expected.items():
            row = got[label]
            assert set(row) == {
                *group_by,
                *METRICS,
                "cost_usd",
                "latency_ms",
                "ttft_ms",
                "cache_hits",
                "saved_usd",
            }
            assert row["cache_hits"] == 0 and row["saved_usd"] == 0  # no record was a hit
            assert {m: row[m] for m in METRICS} == {m: want[m] for m in METRICS}
            assert row["cost_usd"] == pytest.approx(want["cost_usd"], abs=1e-8)
    # Same histograms on both sides: the same percentiles.
    redis_rows = {tuple(r[d] for d in group_by): r for r in from_redis["data"]}
    for row in from_memory["data"]:
        other = redis_rows[tuple(row[d] for d in group_by)]
        assert row["latency_ms"] == other["latency_ms"] and row["ttft_ms"] == other["ttft_ms"]


async def test_the_window_is_applied_per_day(client: Redis) -> None:
    records = random_records(300)
    await RedisUsageSink(client).write(records)
    q = UsageQuery.from_params({"from": "2025-03-09T20:00:00Z", "to": "2025-03-09T21:00:00Z"})
    body = await RedisUsageStore(client).query(q, None)
    assert body["from"] == "2025-03-09T00:00:00.000Z" and body["to"] == "2025-03-10T00:00:00.000Z"
    assert body["data"][0]["requests"] == sum(r.day == "2025-03-09" for r in records)


async def test_percentiles_from_redis_are_sane(client: Redis) -> None:
    latencies = [float(ms) for ms in range(1, 1001)]
    records = [make_record(latency_ms=ms, ttft_ms=ms / 10) for ms in latencies]
    await RedisUsageSink(client).write(records)
    q = UsageQuery.from_params({}, now=NOW)
    row = (await RedisUsageStore(client).query(q, None))["data"][0]
    for name, truth in (("p50", 500), ("p95", 950), ("p99", 990)):
        assert abs(row["latency_ms"][name] - truth) / truth < 0.1
        assert abs(row["ttft_ms"][name] - truth / 10) / (truth / 10) < 0.1


async def test_only_user_groupings_read_the_per_user_hash(client: Redis) -> None:
    records = [make_record(user=f"user-{i}") for i in range(200)]
    records.append(make_record(user="odd\x1fname"))
    await RedisUsageSink(client).write(records)
    day = records[0].day
    assert await client.hlen(agg_key(day, False)) < 10 < await client.hlen(agg_key(day, True))
    q = UsageQuery.from_params({"group_by": "user"}, now=NOW)
    users = {row["user"] for row in (await RedisUsageStore(client).query(q, None))["data"]}
    assert len(users) == 201 and "odd name" in users


async def test_two_replicas_writing_to_one_redis_are_seen_together(
    redis_server: RedisServer, client: Redis
) -> None:
    replicas = []
    for _ in range(2):
        sink = RedisUsageSink.from_url(redis_server.url)
        recorder = UsageRecorder([sink], queue_size=10_000, flush_interval_s=0.01)
        recorder.start()
        replicas.append(recorder)
    for i in range(300):
        replicas[i % 2].record(make_record(request_id=f"r{i}", key="k1" if i < 100 else "k2"))
    await asyncio.gather(*(recorder.aclose(5) for recorder in replicas))

    q = UsageQuery.from_params({"group_by": "key"}, now=NOW)
    body = await RedisUsageStore(client).query(q, None)
    assert [(r["key"], r["requests"]) for r in body["data"]] == [("k1", 100), ("k2", 200)]
    own = await RedisUsageStore(client).query(q, "k1")
    assert [(r["key"], r["requests"]) for r in own["data"]] == [("k1", 100)]
    assert await client.xlen("gateway:usage") == 300


async def test_records_survive_a_redis_outage_in_the_backlog(
    redis_server: RedisServer, client: Redis
) -> None:
    sink = RedisUsageSink.from_url(redis_server.url)
    recorder = UsageRecorder(
        [sink], queue_size=1000, flush_interval_s=0.01, retry_initial_s=0.05, retry_max_s=0.2
    )
    recorder.start()
    redis_server.stop()
    for i in range(50):
        recorder.record(make_record(request_id=f"r{i}"))
    await wait_until(lambda: recorder.stats()["sinks"]["redis"]["failing"])
    with pytest.raises(UsageUnavailable):
        await RedisUsageStore(client).query(UsageQuery.from_params({}, now=NOW), None)

    redis_server.start()
    await wait_until(lambda: recorder.stats()["sinks"]["redis"]["written"] == 50)
    await recorder.aclose(5)
    body = await RedisUsageStore(client).query(UsageQuery.from_params({}, now=NOW), None)
    assert body["data"][0]["requests"] == 50
    assert recorder.stats()["sinks"]["redis"]["dropped"] == 0


async def test_a_command_redis_refuses_does_not_poison_the_sink(client: Redis) -> None:
    day = NOW.strftime("%Y-%m-%d")
    await client.set(agg_key(day, False), "not a hash")  # someone else's key, wrong type
    sink = RedisUsageSink(client)
    recorder = UsageRecorder([sink], queue_size=100, flush_interval_s=0.01)
    recorder.start()
    recorder.record(make_record(latency_ms=float("nan"), ttft_ms=float("inf")))
    recorder.record(make_record())
    await recorder.aclose(5)
    stats = recorder.stats()["sinks"]["redis"]
    assert stats["written"] == 2 and stats["dropped"] == 0 and not stats["failing"]
    assert await client.xlen("gateway:usage") == 2
    q = UsageQuery.from_params({"group_by": "user"}, now=NOW)
    row = (await RedisUsageStore(client).query(q, None))["data"][0]
    assert row["requests"] == 2 and row["latency_ms"] is not None


async def test_a_large_batch_is_written_in_chunks_and_counted_whole(client: Redis) -> None:
    records = [
        make_record(user=f"user-{i}", ttft_ms=float(i % 90 + 1), cached_tokens=i % 3)
        for i in range(2000)
    ]
    await RedisUsageSink(client).write(records)
    assert await client.hlen(agg_key(records[0].day, True)) > 10_000  # many script calls
    store = RedisUsageStore(client)
    by_user = await store.query(UsageQuery.from_params({"group_by": "user"}, now=NOW), None)
    assert len(by_user["data"]) == 2000
    assert {row["requests"] for row in by_user["data"]} == {1}
    total = (await store.query(UsageQuery.from_params({}, now=NOW), None))["data"][0]
    assert total["requests"] == 2000
    assert total["cached_tokens"] == sum(r.cached_tokens for r in records)
    assert total["cost_usd"] == pytest.approx(2.0)
