"""The legacy Completions API at `/v1/completions` with the real openai SDK: translated to chat
for chat-only models (one chat request per prompt), native to `openai` providers with
`completions: true`, and the built-in mock; usage records with `api: "completions"`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI


def completions_config(upstream_url: str, usage_path: Path) -> dict[str, Any]:
    raw = base_config(upstream_url)
    raw["providers"]["legacy"] = {
        "type": "openai",
        "base_url": upstream_url,
        "api_key": "sk-legacy",
        "completions": True,
    }
    raw["models"]["native-up"] = {"provider": "legacy", "model": "native-model-id"}
    raw["tiers"]["native"] = ["native-up"]
    raw["tiers"]["chat-then-native"] = ["gpt-up", "native-up"]
    raw["plans"]["pro"]["tiers"] += ["native", "chat-then-native"]
    raw["usage"] = {"sinks": {"jsonl": str(usage_path)}}
    return raw


@pytest.fixture
async def gateway(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> GatewayServer:
    return await start_gateway(completions_config(upstream.url, tmp_path / "usage.jsonl"))


@pytest.fixture
async def client(gateway: GatewayServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as sdk:
        yield sdk


def _records(gateway: GatewayServer) -> list[dict[str, Any]]:
    path = Path(gateway.config.usage.sinks.jsonl or "")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def usage_records(gateway: GatewayServer, count: int) -> list[dict[str, Any]]:
    for _ in range(200):
        found = _records(gateway)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} usage records, found {_records(gateway)}")


async def test_translated_completion(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    upstream.next(Behaviour(words=["Hi", " there"], prompt_tokens=4))
    completion = await client.completions.create(model="fast", prompt="Say hi", max_tokens=5)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.model == "fast"
    assert [(c.index, c.text, c.finish_reason) for c in completion.choices] == [
        (0, "Hi there", "stop")
    ]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 2)
    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [{"role": "user", "content": "Say hi"}]
    assert sent.body["max_tokens"] == 5
    (record,) = await usage_records(gateway, 1)
    assert record["api"] == "completions" and record["model"] == "gpt-up"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (4, 2)


async def test_a_list_of_prompts_is_one_chat_request_each(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(words=["one"]), Behaviour(words=["two"]))
    completion = await client.completions.create(model="fast", prompt=["first", "second"])
    assert [(c.index, c.text) for c in completion.choices] == [(0, "one"), (1, "two")]
    assert completion.usage is not None and completion.usage.prompt_tokens == 22
    asked = [r.body["messages"][0]["content"] for r in upstream.requests[-2:]]
    assert asked == ["first", "second"]
    assert upstream.requests[-1].body["max_tokens"] == 16  # the legacy API's default


async def test_translated_stream_of_two_prompts(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    upstream.next(Behaviour(words=["a", "b"]), Behaviour(words=["c"]))
    stream = await client.completions.create(
        model="fast", prompt=["p1", "p2"], stream=True, stream_options={"include_usage": True}
    )
    texts: dict[int, str] = {}
    ids = set()
    usage = None
    async for chunk in stream:
        ids.add(chunk.id)
        assert chunk.object == "text_completion"
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
        if chunk.usage is not None:
            usage = chunk.usage
    assert texts == {0: "ab", 1: "c"}
    assert len(ids) == 1
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (22, 3)
    (record,) = await usage_records(gateway, 1)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (22, 3)


async def test_stream_without_include_usage_still_records_usage(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    upstream.next(Behaviour(words=["x", "y"]))
    stream = await client.completions.create(model="fast", prompt="p", stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.text for chunk in chunks for c in chunk.choices) == "xy"
    assert chunks[-1].choices[0].finish_reason == "stop"
    (record,) = await usage_records(gateway, 1)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (11, 2)


async def test_native_completion_is_the_upstreams_own(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    upstream.next(Behaviour(words=["native"]))
    raw = await client.completions.with_raw_response.create(
        model="native", prompt=["a", "b"], max_tokens=3, echo=False, suffix="!"
    )
    completion = raw.parse()
    assert raw.headers["x-gateway-model"] == "native-up"
    assert completion.id == "cmpl-fake" and completion.model == "native-model-id"
    assert [c.finish_reason for c in completion.choices] == ["length", "length"]
    sent = upstream.requests[-1]
    assert sent.path == "/v1/completions"
    assert sent.headers["Authorization"] == "Bearer sk-legacy"
    assert sent.body == {
        "model": "native-model-id",
        "prompt": ["a", "b"],
        "max_tokens": 3,
        "echo": False,
        "suffix": "!",
    }
    (record,) = await usage_records(gateway, 1)
    assert record["api"] == "completions" and record["prompt_tokens"] == 11


async def test_native_stream_asks_for_usage_and_strips_it(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    upstream.next(Behaviour(words=["n1", "n2"]))
    stream = await client.completions.create(model="native", prompt="p", stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.text for chunk in chunks for c in chunk.choices) == "n1n2"
    assert all(chunk.usage is None for chunk in chunks)
    assert upstream.requests[-1].path == "/v1/completions"
    assert upstream.requests[-1].body["stream_options"] == {"include_usage": True}
    (record,) = await usage_records(gateway, 1)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (11, 2)


async def test_token_prompts_move_on_to_a_native_model(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    completion = await client.completions.create(model="chat-then-native", prompt=[1, 2, 3])
    assert completion.choices[0].text == "Hello from the upstream"
    assert [r.path for r in upstream.requests] == ["/v1/completions"]
    with pytest.raises(openai.BadRequestError) as refused:
        await client.completions.create(model="fast", prompt=[[1, 2], [3]])
    assert refused.value.body["param"] == "prompt"  # type: ignore[index]


async def test_bad_prompts_are_openai_400s(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as missing:
        await client.completions.create(model="fast", prompt=None)
    assert missing.value.code == "missing_required_parameter"
    with pytest.raises(openai.BadRequestError) as wrong:
        await client.completions.create(model="fast", prompt=[{"x": 1}])  # type: ignore[arg-type]
    assert wrong.value.code == "invalid_type"


async def test_the_mock_answers_completions(client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(model="demo", prompt="Hello", max_tokens=8)
    assert completion.choices[0].text
    stream = await client.completions.create(model="demo", prompt="Hello", stream=True)
    text = "".join([c.text async for chunk in stream for c in chunk.choices])
    assert text
