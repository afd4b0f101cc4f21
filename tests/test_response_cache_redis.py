"""The response cache on Redis: two gateway processes (the real `gateway serve` command) share
entries through a real redis-server, each entry is one string with its own expiry, and a Redis
that is down is skipped (counted), never an error to the client."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import openai

from tests.conftest import APP_KEY, StartGateway, free_port
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.gateway_process import start_gateway_process, write_config
from tests.redis_server import RedisServer, redis_server
from tests.test_response_cache import MESSAGES, ask, cache_config, chat_calls, sdk

__all__ = ["redis_server"]  # the fixture, imported for this module's tests


def redis_cache_config(upstream_url: str, redis_url: str) -> dict[str, Any]:
    raw = cache_config(upstream_url, backend="redis", ttl_s=120)
    raw["redis"] = {"url": redis_url}
    return raw


def cache_keys(redis_server: RedisServer) -> list[str]:
    reply = redis_server.command("KEYS", "gw:cache:*").decode()  # raw RESP
    return [part for part in reply.split() if part.startswith("gw:cache:")]


async def test_two_gateway_processes_share_entries_through_redis(
    upstream: FakeOpenAI, redis_server: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, redis_cache_config(upstream.url, redis_server.url))
    ports = [free_port(), free_port()]
    processes = [await start_gateway_process(path, port) for port in ports]
    try:
        upstream.next(Behaviour(words=["from", " one"]), Behaviour(words=["unexpected"]))
        one, two = (
            openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=APP_KEY, max_retries=0
            )
            for port in ports
        )
        assert await ask(one) == ("from one", "miss")
        assert await ask(two) == ("from one", "hit")
        stream = await two.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert streamed == "unexpected"
        again = await one.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in again if c.choices]) == (
            "unexpected"
        )
        assert chat_calls(upstream) == 2
        keys = cache_keys(redis_server)
        assert len(keys) == 2  # the whole answer and the stream: two entries
        for key in keys:
            ttl_ms = int(redis_server.command("PTTL", key).lstrip(b":"))
            assert 0 < ttl_ms <= 120_000
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 15)


async def test_a_short_ttl_header_sets_the_redis_expiry(
    upstream: FakeOpenAI, redis_server: RedisServer, start_gateway: StartGateway
) -> None:
    server = await start_gateway(redis_cache_config(upstream.url, redis_server.url))
    assert (await ask(sdk(server), {"x-gateway-cache-ttl": "5"}))[1] == "miss"
    (key,) = cache_keys(redis_server)
    assert 0 < int(redis_server.command("PTTL", key).lstrip(b":")) <= 5000


async def test_redis_down_skips_the_cache_and_never_fails_a_request(
    upstream: FakeOpenAI, redis_server: RedisServer, start_gateway: StartGateway
) -> None:
    server = await start_gateway(redis_cache_config(upstream.url, redis_server.url))
    client = sdk(server)
    upstream.next(Behaviour(words=["cached"]))
    assert await ask(client) == ("cached", "miss")
    assert await ask(client) == ("cached", "hit")
    before = await unavailable_count(server)
    redis_server.stop()
    upstream.next(Behaviour(words=["live 1"]), Behaviour(words=["live 2"]))
    assert await ask(client) == ("live 1", "bypass")
    assert await ask(client) == ("live 2", "bypass")
    stream = await client.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
    assert [c async for c in stream]  # a stream is served too
    assert await unavailable_count(server) > before
    redis_server.start()
    # Once the breaker's probe finds Redis again, the cache is used again.
    deadline = asyncio.get_running_loop().time() + 5
    while (await ask(client))[1] == "bypass":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    assert (await ask(client))[1] == "hit"


async def unavailable_count(server: Any) -> float:
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gateway_cache_unavailable_total{")
    )
