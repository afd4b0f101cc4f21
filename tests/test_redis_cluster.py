"""`redis.mode: cluster` against a real three-master Redis Cluster started by the tests: three
gateway processes admit exactly the configured limit, budgets across keys stay exact although
they live in another slot than the keys' limits, and every other user of the shared client
(cooldowns, usage, runtime keys, stored responses) works with keys spread over the masters,
including after every master has lost its scripts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import RedisCluster
from redis.crc import key_slot

from gateway.config import ResponsesConfig
from gateway.config_redis import RedisConfig
from gateway.limits.base import LimitSpec
from gateway.limits.budgets import BudgetCharge
from gateway.limits.cooldowns_redis import RedisCooldowns
from gateway.limits.redis import RedisLimiter
from gateway.store.keys import KeyRecord, RedisKeyStore
from gateway.store.redis import SharedRedis
from gateway.store.responses import RedisResponseStore, StoredResponse
from gateway.usage import RedisUsageSink, RedisUsageStore, UsageQuery
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_process import statuses_across_replicas, write_config
from tests.redis_cluster import RedisClusterNodes
from tests.redis_cluster import redis_cluster as redis_cluster  # the fixture, re-exported
from tests.test_limits_gateway import AUTH, CHAT, limited_config
from tests.test_usage_records import make_record


def cluster_section(cluster: RedisClusterNodes) -> dict[str, Any]:
    return {"url": cluster.url, "mode": "cluster", "cluster": {"nodes": cluster.seeds[1:]}}


@pytest.fixture
async def shared(redis_cluster: RedisClusterNodes) -> AsyncIterator[SharedRedis]:
    redis_cluster.flush()  # every key and every script gone, on every master
    redis = SharedRedis(RedisConfig.model_validate(cluster_section(redis_cluster)))
    yield redis
    await redis.aclose()


async def owner_of(client: Any, key: str) -> str:
    """The node serving `key`'s slot (host:port)."""
    node = client.get_node_from_key(key)
    return f"{node.host}:{node.port}"


async def test_three_replicas_on_a_cluster_admit_exactly_the_rpm(
    redis_cluster: RedisClusterNodes, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    redis_cluster.flush()
    raw = limited_config(upstream.url, "redis", rpm=100)
    raw["redis"] = cluster_section(redis_cluster)
    path = tmp_path / "config.yaml"
    write_config(path, raw)
    statuses = await statuses_across_replicas(path, {**CHAT, "model": "demo"}, AUTH, 300)
    assert statuses.count(200) == 100
    assert statuses.count(429) == 200
    # Counted in the cluster: the key's log holds the 100, on the master of its slot.
    client = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    try:
        assert await client.zcard("gw:{key:app}:rpm") == 100
    finally:
        await client.aclose()


def keys_on_every_master(count: int) -> list[str]:
    """Key names whose limiter slots (`{key:<name>}`) fall on all three masters' ranges
    (redis-cli gives each master a third of the 16384 slots)."""
    names: list[str] = []
    thirds: set[int] = set()
    i = 0
    while len(names) < count or len(thirds) < 3:
        name = f"k{i}"
        third = key_slot(f"{{key:{name}}}".encode()) * 3 // 16384
        if len(names) < count or third not in thirds:
            names.append(name)
            thirds.add(third)
        i += 1
    return names


async def test_budgets_across_keys_stay_exact_on_a_cluster(shared: SharedRedis) -> None:
    limiter = RedisLimiter(shared.client, cluster=True)
    cost = 1_000
    names = keys_on_every_master(6)

    # Per key: room for 5 each; the total: room for 10 across all of them.
    def charges(name: str) -> tuple[BudgetCharge, ...]:
        return (
            BudgetCharge("key", name, 5 * cost, "day"),
            BudgetCharge("feature", "search", 1_000 * cost, "day"),
            BudgetCharge("total", "total", 10 * cost, "day"),
        )

    spec = LimitSpec(rpm=1_000, tpm=1_000_000, max_concurrent=1_000)
    results = await asyncio.gather(
        *(
            limiter.admit(f"key:{name}", spec, 7, charges(name), cost)
            for _ in range(10)
            for name in names
        )
    )
    admitted = [r for r in results if r.allowed]
    assert len(admitted) == 10
    refused = [r for r in results if not r.allowed]
    assert {r.limit for r in refused} == {"budget"}
    assert {r.extra["budget_scope"] for r in refused} <= {"key", "total"}

    client = shared.client
    wall = limiter._wall_clock()

    def counter(name: str, scope: int) -> str:
        return limiter.budget_key(f"key:{name}", charges(name)[scope].counter(wall))

    assert int(await client.get(counter("x", 2)) or 0) == 10 * cost  # the total
    assert int(await client.get(counter("x", 1)) or 0) == 10 * cost  # the feature
    # What the refused requests took in their keys' slots was given back: the keys' logs,
    # leases, token sums and budgets hold exactly the admitted requests.
    per_key = {name: 0 for name in names}
    for result, name in zip(results, [n for _ in range(10) for n in names], strict=True):
        per_key[name] += result.allowed
    masters = set()
    for name in names:
        rpm, _tpm, tokens, leases = limiter.keys(f"key:{name}")
        masters.add(await owner_of(client, rpm))
        assert await client.zcard(rpm) == per_key[name]
        assert await client.zcard(leases) == per_key[name]
        assert int(await client.hget(tokens, "#sum") or 0) == 7 * per_key[name]
        assert int(await client.get(counter(name, 0)) or 0) == cost * per_key[name]
    assert len(masters) == 3  # the keys really were spread over the three masters

    # Settling at half the reservation corrects both slots.
    by_admission = [
        (name, r) for r, name in zip(results, [n for _ in range(10) for n in names], strict=True)
    ]
    await asyncio.gather(
        *(limiter.settle(f"key:{name}", r, 3, cost // 2) for name, r in by_admission if r.allowed)
    )
    assert int(await client.get(counter("x", 2)) or 0) == 5 * cost
    for name in names:
        _, _, tokens, leases = limiter.keys(f"key:{name}")
        assert await client.zcard(leases) == 0
        assert int(await client.hget(tokens, "#sum") or 0) == 3 * per_key[name]
        assert int(await client.get(counter(name, 0)) or 0) == cost // 2 * per_key[name]
    await limiter.aclose()


async def test_every_redis_user_works_on_a_cluster(shared: SharedRedis) -> None:
    client = shared.client
    # Cooldowns: one slot, `{cooldown}`.
    cooldowns = RedisCooldowns(client, cache_s=0)
    assert not await cooldowns.record_failure("m1", 2, 30)
    assert await cooldowns.record_failure("m1", 2, 30)
    assert await cooldowns.cooling() == {"m1"}
    assert (await cooldowns.health(["m1", "m2"]))["m1"].cooling
    await cooldowns.record_success("m1")
    assert await cooldowns.cooling() == set()

    # Usage: the stream and the day hashes are different slots; each script touches one.
    sink = RedisUsageSink(client)
    records = [
        make_record(ts="2025-03-09T10:00:00.000Z", request_id="a", key="k1", prompt_tokens=5),
        make_record(ts="2025-03-10T10:00:00.000Z", request_id="b", key="k2", prompt_tokens=7),
    ]
    await sink.write(records)
    assert await client.xlen("gateway:usage") == 2
    query = UsageQuery.from_params({"from": "2025-03-09", "to": "2025-03-11", "group_by": "key"})
    answer = await RedisUsageStore(client).query(query, None)
    tokens = {row["key"]: row["prompt_tokens"] for row in answer["data"]}
    assert tokens == {"k1": 5, "k2": 7}

    # Runtime keys: the hash and its version share `{keys}`; each change is one MULTI.
    keys = RedisKeyStore(shared)
    await keys.create(KeyRecord(name="partner", sha256="ab" * 32, plan="pro"))
    await keys.replace(KeyRecord(name="partner", sha256="ab" * 32, plan="free"))
    version, records_now = await keys.load()
    assert version == 2 and [r.plan for r in records_now] == ["free"]
    assert await keys.delete("partner")
    assert await keys.version() == 3

    # Stored responses: one key per response and per item, read one GET at a time.
    responses = RedisResponseStore(shared)
    stored = StoredResponse(
        "app",
        {"id": "resp_1", "output": [{"id": "msg_1", "type": "message", "content": []}]},
        [],
    )
    await responses.save(stored, ResponsesConfig())
    assert (await responses.get("resp_1", "app")) is not None
    assert set(await responses.find_items(["msg_1"], "app")) == {"msg_1"}
    assert await responses.delete("resp_1", "app")
    assert await responses.get("resp_1", "app") is None


async def test_scripts_lost_on_every_master_are_loaded_again(shared: SharedRedis) -> None:
    limiter = RedisLimiter(shared.client, cluster=True)
    names = keys_on_every_master(3)
    spec = LimitSpec(rpm=10)
    for name in names:
        assert (await limiter.admit(f"key:{name}", spec, 0)).allowed
    await shared.client.script_flush()  # sent to every master
    # Alone and batched (many at once share pipelines split per master): all reloaded.
    results = await asyncio.gather(
        *(limiter.admit(f"key:{name}", spec, 0) for name in names for _ in range(3))
    )
    assert all(r.allowed for r in results)
    await limiter.aclose()
