"""Limits as clients meet them: exact across replicas sharing Redis, leases that always come
back, true retry-after, and the right behaviour when Redis goes away and comes back."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.limits.redis import RedisLimiter
from gateway.server.serving import GatewayServer
from gateway.store.redis import connect
from tests.conftest import StartGateway, free_port
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.gateway_process import start_gateway_process, write_config
from tests.redis_server import RedisServer

KEY = "gw-limited-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT: dict[str, Any] = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
STREAM: dict[str, Any] = {**CHAT, "stream": True}


def limited_config(
    upstream_url: str, backend: str, redis_url: str = "", **plan: Any
) -> dict[str, Any]:
    timeout = {"connect": 1, "first_token": 1, "total": 30}
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {"up": {"type": "openai", "base_url": upstream_url}, "mock": {"type": "mock"}},
        "models": {
            "gpt": {"provider": "up", "timeout": timeout},
            "mock-model": {"provider": "mock"},
        },
        "tiers": {"fast": ["gpt"], "demo": ["mock-model"]},
        "routing": {"retries": 0},
        "plans": {"limited": plan},
        "keys": [{"name": "app", "key": KEY, "plan": "limited"}],
        "limits": {"backend": backend, "lease_ttl_s": 1.5, "on_backend_error": "allow"},
    }
    if redis_url:
        raw["limits"]["redis_url"] = redis_url
    return raw


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Each in-process behaviour is proven with both backends."""
    if request.param == "memory":
        return "memory", ""
    server: RedisServer = request.getfixturevalue("redis_server")
    return "redis", server.url


async def in_flight(server: GatewayServer) -> int:
    return await server.process.limiter.in_flight("key:app")


async def settled(server: GatewayServer, within: float = 3.0) -> None:
    """Leases come back to zero (settling runs just after the answer)."""
    deadline = time.perf_counter() + within
    while await in_flight(server) != 0:
        assert time.perf_counter() < deadline, "a lease was not given back"
        await asyncio.sleep(0.02)


# --- answers --------------------------------------------------------------------------------


async def test_rpm_refusal_is_openai_shaped_with_true_headers(
    upstream: FakeOpenAI, backend: tuple[str, str], start_gateway: StartGateway
) -> None:
    server = await start_gateway(limited_config(upstream.url, *backend, rpm=2))
    async with openai.AsyncOpenAI(
        base_url=server.url + "/v1", api_key=KEY, max_retries=0
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(**CHAT)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        assert raw.headers["x-ratelimit-remaining-requests"] == "1"
        await client.chat.completions.create(**CHAT)
        calls = len(upstream.requests)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(**CHAT)
    error = caught.value
    assert error.code == "requests" and error.type == "rate_limit_error"
    headers = error.response.headers
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 55 <= int(headers["retry-after"]) <= 60
    assert int(headers["retry-after-ms"]) > 50_000
    assert headers["x-should-retry"] == "true"
    assert len(upstream.requests) == calls  # a refused request never reaches an upstream


async def test_tpm_reservation_settles_to_the_upstreams_real_count(
    upstream: FakeOpenAI, backend: tuple[str, str], start_gateway: StartGateway
) -> None:
    server = await start_gateway(limited_config(upstream.url, *backend, tpm=1000))
    body = {**CHAT, "max_tokens": 900}  # reserves ~910 of 1000
    upstream.default = Behaviour(prompt_tokens=10, completion_tokens=20)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.url + "/v1/chat/completions", json=body, headers=AUTH
        ) as response:
            assert response.status == 200
        # Settled to 30 real tokens, the next 900-token reservation fits again.
        deadline = time.perf_counter() + 3
        while True:
            async with http.post(
                server.url + "/v1/chat/completions", json=body, headers=AUTH
            ) as response:
                if response.status == 200:
                    remaining = int(response.headers["x-ratelimit-remaining-tokens"])
                    break
            assert time.perf_counter() < deadline, "the reservation was never settled"
            await asyncio.sleep(0.05)
    assert 1000 - 30 - 920 <= remaining <= 1000 - 30 - 900


async def test_streamed_usage_settles_tpm_too(
    upstream: FakeOpenAI, backend: tuple[str, str], start_gateway: StartGateway
) -> None:
    server = await start_gateway(limited_config(upstream.url, *backend, tpm=1000))
    upstream.default = Behaviour(prompt_tokens=10, completion_tokens=20)
    body = {**STREAM, "max_tokens": 900}
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # three reservations of 900 would not fit; three settled to 30 do
            async with http.post(
                server.url + "/v1/chat/completions", json=body, headers=AUTH
            ) as response:
                assert response.status == 200
                await response.read()
            await settled(server)
            await asyncio.sleep(0.05)


async def test_a_request_bigger_than_tpm_is_refused_for_good(
    upstream: FakeOpenAI, backend: tuple[str, str], start_gateway: StartGateway
) -> None:
    server = await start_gateway(limited_config(upstream.url, *backend, tpm=100))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            server.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 500}, headers=AUTH
        ) as response,
    ):
        assert response.status == 429
        assert response.headers["x-should-retry"] == "false"
        assert (await response.json())["error"]["code"] == "tokens"


async def test_concurrency_limit_and_its_lease(
    upstream: FakeOpenAI, backend: tuple[str, str], start_gateway: StartGateway
) -> None:
    server = await start_gateway(limited_config(upstream.url, *backend, max_concurrent=1))
    upstream.next(Behaviour(pace_s=0.2))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.url + "/v1/chat/completions", json=STREAM, headers=AUTH
        ) as streaming:
            await streaming.content.readuntil(b"\n\n")
            assert await in_flight(server) == 1
            async with http.post(
                server.url + "/v1/chat/completions", json=CHAT, headers=AUTH
            ) as refused:
                assert refused.status == 429
                assert (await refused.json())["error"]["code"] == "concurrency"
                assert refused.headers["retry-after"] == "1"
            await streaming.read()
        await settled(server)
        async with http.post(
            server.url + "/v1/chat/completions", json=CHAT, headers=AUTH
        ) as response:
            assert response.status == 200


async def test_a_long_stream_keeps_its_lease_past_the_ttl(
    upstream: FakeOpenAI, backend: tuple[str, str], start_gateway: StartGateway
) -> None:
    server = await start_gateway(limited_config(upstream.url, *backend, max_concurrent=1))
    upstream.next(Behaviour(pace_s=0.4, words=["w"] * 8))  # ~3.2 s; lease_ttl_s is 1.5
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.url + "/v1/chat/completions", json=STREAM, headers=AUTH) as streaming,
    ):
        await streaming.content.readuntil(b"\n\n")
        await asyncio.sleep(2.5)
        assert await in_flight(server) == 1
        async with http.post(
            server.url + "/v1/chat/completions", json=CHAT, headers=AUTH
        ) as refused:
            assert refused.status == 429
        await streaming.read()
    await settled(server)


@pytest.mark.parametrize(
    ("behaviour", "how"),
    [
        (Behaviour(), "completed stream"),
        (Behaviour(pace_s=0.3, words=["w"] * 20), "client disconnect mid-stream"),
        (Behaviour(first_event_delay_s=5), "client disconnect before the first token"),
        (Behaviour(reset_after_events=2), "upstream reset"),
        (Behaviour(first_event_delay_s=3), "first-token timeout"),
        (Behaviour(status=500), "upstream error"),
    ],
)
async def test_leases_come_back_to_zero(
    upstream: FakeOpenAI,
    backend: tuple[str, str],
    start_gateway: StartGateway,
    behaviour: Behaviour,
    how: str,
) -> None:
    server = await start_gateway(limited_config(upstream.url, *backend, max_concurrent=3))
    upstream.next(behaviour)
    async with aiohttp.ClientSession() as http:
        if how.startswith("client disconnect"):
            task = asyncio.create_task(_read_some(http, server))
            await asyncio.sleep(0.4)
            assert await in_flight(server) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            async with http.post(
                server.url + "/v1/chat/completions", json=STREAM, headers=AUTH
            ) as response:
                await response.read()
    await settled(server)


async def _read_some(http: aiohttp.ClientSession, server: GatewayServer) -> None:
    async with http.post(
        server.url + "/v1/chat/completions", json=STREAM, headers=AUTH
    ) as response:
        await response.read()


async def test_model_limits_skip_a_saturated_model_then_answer_capacity(
    upstream: FakeOpenAI, backend: tuple[str, str], start_gateway: StartGateway
) -> None:
    raw = limited_config(upstream.url, *backend)
    raw["models"]["gpt"]["limits"] = {"max_concurrent": 1}
    raw["models"]["mock-model"]["limits"] = {"max_concurrent": 1}
    raw["providers"]["mock"] = {"type": "mock", "pace_ms": 100}
    raw["tiers"]["fast"] = ["gpt", "mock-model"]
    server = await start_gateway(raw)
    upstream.next(Behaviour(pace_s=0.3))
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.url + "/v1/chat/completions", json=STREAM, headers=AUTH) as first,
    ):
        await first.content.readuntil(b"\n\n")
        async with http.post(
            server.url + "/v1/chat/completions", json=STREAM, headers=AUTH
        ) as second:
            assert second.headers["x-gateway-model"] == "mock-model"
            await second.content.readuntil(b"\n\n")
            async with http.post(
                server.url + "/v1/chat/completions", json=CHAT, headers=AUTH
            ) as third:
                assert third.status == 429
                error = (await third.json())["error"]
                assert error["code"] == "capacity"
                assert third.headers["retry-after"]
            await second.read()
        await first.read()


async def test_process_max_concurrent_answers_capacity(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = limited_config(upstream.url, "memory")
    raw["server"]["max_concurrent"] = 1
    server = await start_gateway(raw)
    upstream.next(Behaviour(pace_s=0.2))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.url + "/v1/chat/completions", json=STREAM, headers=AUTH
        ) as streaming:
            await streaming.content.readuntil(b"\n\n")
            async with http.post(
                server.url + "/v1/chat/completions", json=CHAT, headers=AUTH
            ) as refused:
                assert refused.status == 429
                assert (await refused.json())["error"]["code"] == "capacity"
            await streaming.read()
        await asyncio.sleep(0.05)
        async with http.post(
            server.url + "/v1/chat/completions", json=CHAT, headers=AUTH
        ) as response:
            assert response.status == 200


async def test_rejections_are_counted(upstream: FakeOpenAI, start_gateway: StartGateway) -> None:
    server = await start_gateway(limited_config(upstream.url, "memory", rpm=1))
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(server.url + "/v1/chat/completions", json=CHAT, headers=AUTH):
                pass
        async with http.get(server.url + "/metrics") as response:
            text = await response.text()
    line = next(
        line
        for line in text.splitlines()
        if line.startswith('gateway_rate_limited_total{limit="requests",plan="limited"}')
    )
    assert float(line.split()[-1]) >= 2


# --- several replicas sharing Redis --------------------------------------------------------


@pytest.fixture
async def replicas(
    tmp_path: Path,
) -> AsyncIterator[Any]:
    processes: list[asyncio.subprocess.Process] = []

    async def launch(raw: dict[str, Any], count: int) -> list[str]:
        path = tmp_path / "config.yaml"
        write_config(path, raw)
        urls = []
        for _ in range(count):
            port = free_port()
            processes.append(await start_gateway_process(path, port))
            urls.append(f"http://127.0.0.1:{port}")
        return urls

    yield launch
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()


async def spread(
    http: aiohttp.ClientSession, urls: list[str], body: dict[str, Any], count: int
) -> list[int]:
    """`count` requests at once, request i to replica i % len(urls): their statuses."""

    async def one(i: int) -> int:
        url = urls[i % len(urls)] + "/v1/chat/completions"
        async with http.post(url, json=body, headers=AUTH) as response:
            await response.read()
            return response.status

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def test_three_replicas_admit_exactly_the_rpm(
    redis_server: RedisServer, upstream: FakeOpenAI, replicas: Any
) -> None:
    raw = limited_config(upstream.url, "redis", redis_server.url, rpm=30)
    urls = await replicas(raw, 3)
    body = {**CHAT, "model": "demo"}
    async with aiohttp.ClientSession() as http:
        statuses = await spread(http, urls, body, 100)
    assert statuses.count(200) == 30
    assert statuses.count(429) == 70


def script_calls(server: RedisServer) -> int:
    stats = server.command("INFO", "commandstats").decode()
    if "cmdstat_evalsha:calls=" not in stats:
        return 0
    return int(stats.split("cmdstat_evalsha:calls=")[1].split(",")[0])


async def test_three_replicas_admit_exactly_the_rpm_with_quota_blocks(
    redis_server: RedisServer, upstream: FakeOpenAI, replicas: Any
) -> None:
    """rpm 1,024 is large enough for local quota leases: each replica admits from blocks it
    takes from Redis, and the three still admit exactly the limit, the last ones request by
    request, with no quota left stranded in a replica's block."""
    raw = limited_config(upstream.url, "redis", redis_server.url, rpm=1024)
    urls = await replicas(raw, 3)
    body = {**CHAT, "model": "demo"}
    calls_before = script_calls(redis_server)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=48)) as http:
        statuses = await spread(http, urls, body, 800)
        # Far from the limit, blocks (16 admissions each here) serve them: a call per block
        # and one to give back its rest, not a call per request.
        assert script_calls(redis_server) - calls_before < 200
        statuses += await spread(http, urls, body, 300)
    assert statuses.count(200) == 1024
    assert statuses.count(429) == 76


async def test_three_replicas_never_exceed_max_concurrent_at_the_upstream(
    redis_server: RedisServer, upstream: FakeOpenAI, replicas: Any
) -> None:
    raw = limited_config(upstream.url, "redis", redis_server.url, max_concurrent=5)
    urls = await replicas(raw, 3)
    upstream.default = Behaviour(pace_s=0.1, words=["w"] * 5)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, upstream.in_flight)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    async with aiohttp.ClientSession() as http:
        statuses = await spread(http, urls, STREAM, 30)
    watcher.cancel()
    assert peak <= 5
    assert statuses.count(200) >= 5
    assert set(statuses) <= {200, 429}


async def test_a_killed_replicas_lease_expires(
    redis_server: RedisServer, upstream: FakeOpenAI, replicas: Any, tmp_path: Path
) -> None:
    raw = limited_config(upstream.url, "redis", redis_server.url, max_concurrent=1)
    path = tmp_path / "config.yaml"
    write_config(path, raw)
    port = free_port()
    process = await start_gateway_process(path, port)
    limiter = RedisLimiter(connect(redis_server.url), lease_ttl_s=1.5)
    upstream.next(Behaviour(pace_s=1.0, words=["w"] * 30))
    try:
        async with aiohttp.ClientSession() as http:
            response = await http.post(
                f"http://127.0.0.1:{port}/v1/chat/completions", json=STREAM, headers=AUTH
            )
            await response.content.readuntil(b"\n\n")
            assert await limiter.in_flight("key:app") == 1
            process.send_signal(signal.SIGKILL)
            await process.wait()
            response.close()
        killed_at = time.perf_counter()
        while await limiter.in_flight("key:app") != 0:
            assert time.perf_counter() - killed_at < 1.5 + 1.0, "the lease did not expire"
            await asyncio.sleep(0.05)
    finally:
        await limiter.aclose()


# --- Redis going away and coming back ------------------------------------------------------


@pytest.mark.parametrize("on_error", ["allow", "deny"])
async def test_redis_down_then_back(
    redis_server: RedisServer,
    upstream: FakeOpenAI,
    start_gateway: StartGateway,
    on_error: str,
) -> None:
    raw = limited_config(upstream.url, "redis", redis_server.url, rpm=3)
    raw["limits"]["on_backend_error"] = on_error
    server = await start_gateway(raw)
    async with aiohttp.ClientSession() as http:

        async def status() -> int:
            async with http.post(
                server.url + "/v1/chat/completions", json=CHAT, headers=AUTH
            ) as response:
                await response.read()
                return response.status

        async def ready() -> tuple[int, Any]:
            async with http.get(server.url + "/readyz") as response:
                return response.status, await response.json()

        assert await status() == 200
        redis_server.stop()
        started_at = time.perf_counter()
        down = await status()
        assert time.perf_counter() - started_at < 2
        ready_status, ready_body = await ready()
        if on_error == "allow":
            assert down == 200
            assert ready_status == 200 and ready_body["degraded"]
        else:
            assert down == 503
            assert ready_status == 503 and ready_body["reasons"]
        redis_server.start()
        # Back: limits work again, with no gateway restart.
        deadline = time.perf_counter() + 5
        while (await ready())[0] != 200 or "degraded" in (await ready())[1]:
            assert time.perf_counter() < deadline
            await asyncio.sleep(0.1)
        statuses = [await status() for _ in range(4)]
        assert statuses[:3] == [200, 200, 200] and statuses[3] == 429


@pytest.mark.parametrize("on_error", ["allow", "deny"])
async def test_a_frozen_redis_costs_one_timeout_not_one_per_request(
    redis_server: RedisServer,
    upstream: FakeOpenAI,
    start_gateway: StartGateway,
    on_error: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis that holds its connections but answers nothing (SIGSTOP) would make every
    request wait out the socket timeout; the breaker opens on the first one, so the rest are
    answered at once (served or refused, as configured), the log says so once, not per request,
    and limits apply again soon after Redis answers."""
    raw = limited_config(upstream.url, "redis", redis_server.url, rpm=1000)
    raw["limits"]["on_backend_error"] = on_error
    server = await start_gateway(raw)
    expected = 200 if on_error == "allow" else 503
    async with aiohttp.ClientSession() as http:

        async def timed() -> tuple[int, float]:
            started_at = time.perf_counter()
            async with http.post(
                server.url + "/v1/chat/completions", json=CHAT, headers=AUTH
            ) as response:
                await response.read()
                return response.status, time.perf_counter() - started_at

        assert (await timed())[0] == 200
        redis_server.pause()
        try:
            first, first_s = await timed()
            assert first == expected
            assert first_s < 2.0  # one socket timeout (0.5 s), not a hang
            later = [await timed() for _ in range(30)]
        finally:
            redis_server.resume()
        assert {status for status, _ in later} == {expected}
        # Each is far under the 0.5 s socket timeout a waited-on Redis would cost.
        assert max(took for _, took in later) < 0.2, later
        outage_lines = [r for r in caplog.records if r.name == "gateway.redis"]
        assert len(outage_lines) <= 2, [r.getMessage() for r in outage_lines]
        warned = "limits backend unavailable"
        backend_lines = [r for r in caplog.records if r.getMessage() == warned]
        assert len(backend_lines) <= 1
        # Once a minute per process (an earlier test may have had it): when there, it says why.
        assert all(str(getattr(r, "error", "")).startswith("redis: ") for r in backend_lines)
        # Back: the probe sees Redis within its interval and the limiter is asked again.
        deadline = time.perf_counter() + 8
        while True:
            async with http.get(server.url + "/readyz") as response:
                body = await response.json()
                if response.status == 200 and "degraded" not in body:
                    break
            assert time.perf_counter() < deadline, body
            await asyncio.sleep(0.1)
        assert (await timed())[0] == 200
        assert any(r.getMessage() == "redis reachable again" for r in caplog.records)
