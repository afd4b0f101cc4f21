"""Cost as the provider's invoice says it, to the cent-millionth, from the providers' own
documented usage objects: OpenAI chat and Responses with cached and reasoning tokens, streamed
and not; Anthropic with cache reads and 5-minute and 1-hour cache writes (its stream splits
usage across `message_start` and `message_delta`), translated and native, streamed and not; a
fallback, where only the answering model is billed; a stream the client leaves halfway.

Prices are Anthropic's and OpenAI's published shapes: cache reads at `cached_input`, 5-minute
cache writes at `cache_write` (1.25x input), 1-hour writes at `cache_write_1h` (2x input),
reasoning inside `completion_tokens` at `output`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import GatewayConfig
from gateway.pipeline.cost import Tokens, cost_usd
from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config, to_config
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.usage_lines import wait_for_records

GPT_PRICE = {"input": 2.5, "output": 10, "cached_input": 1.25}
CLAUDE_PRICE = {"input": 3, "output": 15, "cached_input": 0.3, "cache_write": 3.75}
CLAUDE_PRICE_1H = {**CLAUDE_PRICE, "cache_write_1h": 6}

# OpenAI: 1200 prompt tokens of which 1000 cached; 300 completion tokens of which 200 reasoning.
# (200 x 2.5 + 1000 x 1.25 + 300 x 10) / 1e6
OPENAI_COST = 0.00475
# Anthropic: 1000 uncached input, 2000 read from the cache, 1500 written (500 of them to the
# 1-hour cache), 400 output.
# (1000 x 3 + 2000 x 0.3 + 1000 x 3.75 + 500 x 6 + 400 x 15) / 1e6
ANTHROPIC_COST = 0.01635


def config(openai_url: str, anthropic_url: str, usage_path: Path) -> dict[str, Any]:
    raw = base_config(openai_url)
    raw["providers"]["native"] = {
        "type": "openai",
        "base_url": openai_url,
        "api_key": "sk-native",
        "responses": True,
    }
    raw["providers"]["claude"] = {"type": "anthropic", "base_url": anthropic_url}
    raw["models"]["gpt-up"]["price"] = GPT_PRICE
    raw["models"]["gpt-native"] = {"provider": "native", "price": GPT_PRICE}
    raw["models"]["claude-model"] = {
        "provider": "claude",
        "model": "claude-x",
        "price": CLAUDE_PRICE_1H,
    }
    raw["models"]["claude-failing"] = {"provider": "claude", "price": {"input": 100, "output": 100}}
    raw["tiers"] |= {
        "native": ["gpt-native"],
        "claude": ["claude-model"],
        "claude-fallback": ["claude-failing", "claude-model"],
    }
    raw["routing"]["fallback_on"] = ["5xx"]
    raw["plans"]["pro"]["tiers"] = list(raw["tiers"])
    raw["usage"] = {"sinks": {"jsonl": str(usage_path)}}
    return raw


@pytest.fixture
async def gateway(
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    start_gateway: StartGateway,
    tmp_path: Path,
) -> GatewayServer:
    return await start_gateway(config(upstream.url, claude_upstream.url, tmp_path / "u.jsonl"))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    headers = {"Authorization": f"Bearer {APP_KEY}", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession(headers=headers) as session:
        yield session


def openai_usage_behaviour() -> Behaviour:
    return Behaviour(
        words=["a"] * 5,
        prompt_tokens=1200,
        cached_tokens=1000,
        completion_tokens=300,
        reasoning_tokens=200,
    )


def anthropic_reply() -> Reply:
    return Reply(
        input_tokens=1000,
        cache_read_input_tokens=2000,
        cache_creation_input_tokens=1500,
        cache_creation_1h_tokens=500,
        output_tokens=400,
    )


async def records(gateway: GatewayServer, count: int) -> list[dict[str, Any]]:
    return await wait_for_records(Path(gateway.config.usage.sinks.jsonl or ""), count)


async def call(
    http: aiohttp.ClientSession, gateway: GatewayServer, path: str, body: dict[str, Any]
) -> None:
    async with http.post(gateway.url + path, json=body) as answer:
        assert answer.status == 200, await answer.text()
        await answer.read()


CHAT = {"messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("path", "tier", "body"),
    [
        ("/v1/chat/completions", "fast", CHAT),
        ("/v1/responses", "native", {"input": "hi"}),
        ("/v1/responses", "fast", {"input": "hi"}),
        ("/v1/messages", "fast", MESSAGES),
    ],
    ids=["chat", "responses-native", "responses-translated", "messages-translated"],
)
async def test_openai_usage_is_billed_to_the_cent_millionth(
    path: str,
    tier: str,
    body: dict[str, Any],
    stream: bool,
    http: aiohttp.ClientSession,
    gateway: GatewayServer,
    upstream: FakeOpenAI,
) -> None:
    upstream.next(openai_usage_behaviour())
    await call(http, gateway, path, {**body, "model": tier, "stream": stream})
    (record,) = await records(gateway, 1)
    assert (record["prompt_tokens"], record["cached_tokens"]) == (1200, 1000)
    assert (record["completion_tokens"], record["reasoning_tokens"]) == (300, 200)
    assert record["cache_write_tokens"] == 0
    assert record["cost_usd"] == pytest.approx(OPENAI_COST, abs=1e-8)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/messages", MESSAGES),
        ("/v1/responses", {"input": "hi"}),
    ],
    ids=["chat-translated", "messages-native", "responses-translated"],
)
async def test_anthropic_cache_reads_and_writes_are_billed_apart(
    path: str,
    body: dict[str, Any],
    stream: bool,
    http: aiohttp.ClientSession,
    gateway: GatewayServer,
    claude_upstream: FakeAnthropic,
) -> None:
    claude_upstream.next(anthropic_reply())
    await call(http, gateway, path, {**body, "model": "claude", "stream": stream})
    (record,) = await records(gateway, 1)
    assert record["prompt_tokens"] == 4500  # input + cache reads + cache writes, as OpenAI counts
    assert (record["cached_tokens"], record["cache_write_tokens"]) == (2000, 1500)
    assert record["completion_tokens"] == 400
    assert record["cost_usd"] == pytest.approx(ANTHROPIC_COST, abs=1e-8)


async def test_only_the_answering_model_is_billed(
    http: aiohttp.ClientSession, gateway: GatewayServer, claude_upstream: FakeAnthropic
) -> None:
    claude_upstream.next(Reply(status=500), anthropic_reply())
    await call(http, gateway, "/v1/messages", {**MESSAGES, "model": "claude-fallback"})
    (record,) = await records(gateway, 1)
    assert record["model"] == "claude-model" and record["attempts"] == 2
    assert record["cost_usd"] == pytest.approx(ANTHROPIC_COST, abs=1e-8)


async def test_a_stream_left_halfway_bills_what_was_sent(
    http: aiohttp.ClientSession, gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(words=["w"] * 40, pace_s=0.02, prompt_tokens=1200))
    body = {**CHAT, "model": "fast", "stream": True}
    async with http.post(gateway.url + "/v1/chat/completions", json=body) as answer:
        assert answer.status == 200
        for _ in range(5):
            await answer.content.readline()
    (record,) = await records(gateway, 1)
    assert record["status"] == 499 and record["estimated"] is True
    sent = record["completion_tokens"]
    assert 0 < sent < 40
    # The estimate of the prompt at input, what was streamed at output.
    expected = (record["prompt_tokens"] * 2.5 + sent * 10) / 1e6
    assert record["cost_usd"] == pytest.approx(expected, abs=1e-8)


def test_the_cost_formula_prices_each_kind_of_token() -> None:
    raw = base_config("http://127.0.0.1:9/v1")
    raw["models"]["gpt-up"]["price"] = CLAUDE_PRICE_1H
    gateway_config: GatewayConfig = to_config(raw)
    tokens = Tokens(4500, 400, cached=2000, cache_write=1500, cache_write_1h=500)
    assert cost_usd(gateway_config, "gpt-up", tokens) == pytest.approx(ANTHROPIC_COST, abs=1e-12)
    # No cache_write_1h price: 1-hour writes at cache_write; no cache_write: at input.
    raw["models"]["gpt-up"]["price"] = CLAUDE_PRICE
    expected = (1000 * 3 + 2000 * 0.3 + 1500 * 3.75 + 400 * 15) / 1e6
    assert cost_usd(to_config(raw), "gpt-up", tokens) == pytest.approx(expected, abs=1e-12)
    raw["models"]["gpt-up"]["price"] = {"input": 3, "output": 15}
    expected = (4500 * 3 + 400 * 15) / 1e6
    assert cost_usd(to_config(raw), "gpt-up", tokens) == pytest.approx(expected, abs=1e-12)
