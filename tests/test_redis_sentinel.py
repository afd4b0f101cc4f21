"""`redis.mode: sentinel` against a real primary, its replica and real sentinels: three gateway
processes admit exactly the configured limit, and when the primary is killed under load the
gateway follows the failover by itself: under `allow` nothing is refused meanwhile, under
`deny` 503s, then service within about the sentinel's failover time, on the new primary."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from gateway.server.serving import GatewayServer
from tests.conftest import StartGateway, free_port
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_process import statuses_across_replicas, write_config
from tests.redis_cluster import RedisSentinelSetup
from tests.redis_cluster import redis_failover as redis_failover  # the fixtures, re-exported
from tests.redis_cluster import redis_sentinels as redis_sentinels
from tests.test_limits_gateway import AUTH, CHAT, limited_config

BODY = {**CHAT, "model": "demo"}
# down-after-milliseconds (0.5 s) + the vote + the promotion + the client's next probe (at
# most 1 s apart): about 3 s here. The bound leaves room for a slow, shared machine.
FAILOVER_WITHIN_S = 8.0


def sentinel_section(setup: RedisSentinelSetup, extra_nodes: list[str] = []) -> dict[str, Any]:  # noqa: B006
    return {
        "mode": "sentinel",
        "sentinel": {"master": setup.master_name, "nodes": [*extra_nodes, *setup.nodes]},
    }


async def test_three_replicas_on_sentinel_admit_exactly_the_rpm(
    redis_sentinels: RedisSentinelSetup, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    raw = limited_config(upstream.url, "redis", rpm=100)
    # A dead sentinel listed first: the client asks the next one.
    raw["redis"] = sentinel_section(redis_sentinels, [f"127.0.0.1:{free_port()}"])
    path = tmp_path / "config.yaml"
    write_config(path, raw)
    statuses = await statuses_across_replicas(path, BODY, AUTH, 300)
    assert statuses.count(200) == 100
    assert statuses.count(429) == 200
    primary = Redis.from_url(redis_sentinels.primary.url)
    try:
        assert await primary.zcard("gw:{key:app}:rpm") == 100
    finally:
        await primary.aclose()


@pytest.mark.parametrize("on_error", ["allow", "deny"])
async def test_killing_the_primary_under_load_fails_over(
    redis_failover: RedisSentinelSetup,
    upstream: FakeOpenAI,
    start_gateway: StartGateway,
    on_error: str,
) -> None:
    raw = limited_config(upstream.url, "redis", rpm=1_000_000)
    raw["limits"]["on_backend_error"] = on_error
    raw["redis"] = sentinel_section(redis_failover)
    gateway: GatewayServer = await start_gateway(raw)
    old_primary, new_primary = redis_failover.primary, redis_failover.replica
    # (seconds from the kill to the request's sending, status, admitted); -1 for a request
    # sent before the kill. Timed by the sending, not the answer: a request admitted by the
    # old primary just before the kill can be answered after it, and would look like a
    # failover that took no time at all.
    seen: list[tuple[float, int, bool]] = []
    killed_at = 0.0
    done = asyncio.Event()

    async def client(http: aiohttp.ClientSession) -> None:
        while not done.is_set():
            at = time.monotonic() - killed_at if killed_at else -1.0
            async with http.post(
                gateway.url + "/v1/chat/completions", json=BODY, headers=AUTH
            ) as response:
                await response.read()
                admitted = "x-ratelimit-limit-requests" in response.headers
                seen.append((at, response.status, admitted))
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as http:
        clients = [asyncio.create_task(client(http)) for _ in range(4)]
        await asyncio.sleep(0.5)  # load before the kill
        assert seen and all(status == 200 and admitted for _, status, admitted in seen)
        replica = Redis.from_url(new_primary.url)
        try:
            replicated = await replica.zcard("gw:{key:app}:rpm")
        finally:
            await replica.aclose()
        old_primary.kill()
        killed_at = time.monotonic()
        # Until the gateway admits again (the limiter answers: ratelimit headers) for 0.5 s.
        deadline = killed_at + FAILOVER_WITHIN_S + 5
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            admitted_after = [at for at, status, admitted in seen if at > 0 and admitted]
            if admitted_after and time.monotonic() - killed_at - admitted_after[0] > 0.5:
                break
        done.set()
        await asyncio.gather(*clients)

    after = [(at, status, admitted) for at, status, admitted in seen if at >= 0]
    resumed = [at for at, status, admitted in after if admitted and status == 200]
    assert resumed, f"admission never resumed after the kill: {after[-5:]}"
    assert resumed[0] < FAILOVER_WITHIN_S, f"admission resumed only after {resumed[0]:.1f}s"
    assert redis_failover.master_port() == new_primary.port
    statuses = {status for _, status, _ in after}
    if on_error == "allow":
        assert statuses == {200}  # served, unlimited, while there was no primary
    else:
        assert 503 in statuses and statuses <= {200, 503}
        # Once admission resumed, it stayed: no 503 after the first admitted answer.
        assert all(status == 200 for at, status, _ in after if at > resumed[0])
    # The admissions after the failover were counted on the promoted replica, on top of
    # what it had replicated before.
    promoted = Redis.from_url(new_primary.url)
    try:
        assert await promoted.zcard("gw:{key:app}:rpm") >= replicated + len(resumed)
        assert (await promoted.info("replication"))["role"] == "master"
    finally:
        await promoted.aclose()
