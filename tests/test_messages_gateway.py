"""The real anthropic SDK at the gateway's `/v1/messages`, translated to chat completions models
(a fake OpenAI upstream, the built-in mock): answers, streams, tools, images, count_tokens,
errors in Anthropic's dialect, limits and usage records."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic.types import ImageBlockParam, MessageParam, ToolParam

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

USER: list[MessageParam] = [{"role": "user", "content": "Hello there"}]
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9"
    "awAAAABJRU5ErkJggg=="
)


def messages_config(upstream_url: str, usage_path: Path) -> dict[str, Any]:
    raw = base_config(upstream_url)
    raw["aliases"]["claude-sonnet-4-5"] = "fast"  # what Claude Code sends, mapped to a tier
    raw["usage"] = {"sinks": {"jsonl": str(usage_path)}}
    raw["plans"]["limited"] = {"tiers": ["fast"], "rpm": 1}
    raw["keys"].append({"name": "limited", "key": "gw-limited", "plan": "limited"})
    raw["plans"]["tokens"] = {"tiers": ["fast"], "tpm": 200}
    raw["keys"].append({"name": "tokens", "key": "gw-tokens", "plan": "tokens"})
    return raw


@pytest.fixture
async def gateway(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> GatewayServer:
    return await start_gateway(messages_config(upstream.url, tmp_path / "usage.jsonl"))


@pytest.fixture
async def claude(gateway: GatewayServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=APP_KEY, max_retries=0, timeout=20
    ) as sdk:
        yield sdk


def records(gateway: GatewayServer) -> list[dict[str, Any]]:
    path = Path(gateway.config.usage.sinks.jsonl or "")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def flushed_records(gateway: GatewayServer, count: int) -> list[dict[str, Any]]:
    for _ in range(200):
        found = records(gateway)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} usage records, found {records(gateway)}")


async def post_stream(gateway: GatewayServer, body: dict[str, Any]) -> str:
    """A stream's whole text, read with a plain HTTP client."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gateway.url + "/v1/messages", json=body, headers={"x-api-key": APP_KEY}
        ) as answer,
    ):
        return (await answer.read()).decode()


def event_names(text: str) -> list[str]:
    return [line[7:] for line in text.splitlines() if line.startswith("event: ")]


async def test_create_translated_to_a_chat_model(
    claude: anthropic.AsyncAnthropic, upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    upstream.next(Behaviour(words=["Hi", " you"], prompt_tokens=20, completion_tokens=2))
    raw = await claude.messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=256,
        system="Be brief.",
        messages=USER,
        metadata={"user_id": "user-42"},
    )
    message = await raw.parse()
    assert raw.headers["request-id"] == raw.headers["x-request-id"]
    assert raw.headers["x-gateway-model"] == "gpt-up"
    assert message.id.startswith("msg_")
    assert message.model == "claude-sonnet-4-5"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hi you"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 2)
    sent = upstream.requests[-1].body
    assert sent["model"] == "upstream-model-id" and sent["max_tokens"] == 256
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    (record,) = await flushed_records(gateway, 1)
    assert record["api"] == "messages" and record["user"] == "user-42"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (20, 2)
    assert record["key"] == "app" and record["model"] == "gpt-up"


async def test_stream_translated_has_anthropics_event_sequence(
    claude: anthropic.AsyncAnthropic, upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    upstream.next(Behaviour(words=["One", " two", " three"], prompt_tokens=9))
    async with claude.messages.stream(model="fast", max_tokens=64, messages=USER) as stream:
        texts = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == "One two three"
    assert final.content[0].text == "One two three"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 9 and final.usage.output_tokens == 3
    (record,) = await flushed_records(gateway, 1)
    assert record["api"] == "messages" and record["stream"] is True
    assert record["prompt_tokens"] == 9 and record["completion_tokens"] == 3
    assert not record["estimated"] and not record["cut"]


async def test_stream_events_in_order_on_the_wire(
    upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    upstream.next(Behaviour(words=["a", "b"]))
    body = {"model": "fast", "max_tokens": 10, "messages": USER, "stream": True}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gateway.url + "/v1/messages?beta=true",
            json=body,
            headers={"x-api-key": APP_KEY, "anthropic-version": "2023-06-01"},
        ) as answer,
    ):
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        text = (await answer.read()).decode()
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_tool_round_trip_translated(
    claude: anthropic.AsyncAnthropic, upstream: FakeOpenAI
) -> None:
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    upstream.next(Behaviour(words=[], tool_calls=[call]))
    first = await claude.messages.create(
        model="fast", max_tokens=100, messages=USER, tools=[WEATHER], tool_choice={"type": "any"}
    )
    assert first.stop_reason == "tool_use"
    (tool,) = first.content
    assert tool.type == "tool_use" and tool.name == "get_weather"
    assert tool.input == {"city": "Paris"} and tool.id == "call_1"
    sent = upstream.requests[-1].body
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"] == "required"
    upstream.next(Behaviour(words=["Sunny."]))
    second = await claude.messages.create(
        model="fast",
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            *USER,
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": tool.id, "name": tool.name, "input": tool.input}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}],
            },
        ],
    )
    assert second.content[0].text == "Sunny."  # type: ignore[union-attr]
    turns = upstream.requests[-1].body["messages"]
    assert turns[-2]["tool_calls"][0]["id"] == "call_1"
    assert turns[-1] == {"role": "tool", "tool_call_id": "call_1", "content": "18C"}


async def test_tool_call_streamed_translated(
    claude: anthropic.AsyncAnthropic, upstream: FakeOpenAI
) -> None:
    call = {"id": "call_9", "name": "get_weather", "arguments": '{"city": "Rome"}'}
    upstream.next(Behaviour(words=["Let me check."], tool_calls=[call]))
    async with claude.messages.stream(
        model="fast", max_tokens=100, messages=USER, tools=[WEATHER]
    ) as stream:
        final = await stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "tool_use"]
    assert final.content[1].input == {"city": "Rome"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"


async def test_an_image_goes_up_as_a_data_url(
    claude: anthropic.AsyncAnthropic, upstream: FakeOpenAI
) -> None:
    image: ImageBlockParam = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
    }
    await claude.messages.create(
        model="fast",
        max_tokens=10,
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}],
    )
    parts = upstream.requests[-1].body["messages"][-1]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}


async def test_the_mock_answers_messages(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(model="demo", max_tokens=20, messages=USER)
    assert message.content and message.content[0].type == "text"
    async with claude.messages.stream(model="demo", max_tokens=20, messages=USER) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text  # type: ignore[union-attr]


async def test_count_tokens_is_the_estimate_for_a_chat_model(
    claude: anthropic.AsyncAnthropic, upstream: FakeOpenAI
) -> None:
    counted = await claude.messages.count_tokens(model="fast", messages=USER, system="Be brief.")
    assert counted.input_tokens > 0
    assert not upstream.requests  # an estimate: nothing went upstream


async def test_errors_are_anthropics_own_classes(
    claude: anthropic.AsyncAnthropic, upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="wrong", max_retries=0
    ) as stranger:
        with pytest.raises(anthropic.AuthenticationError) as auth:
            await stranger.messages.create(model="fast", max_tokens=5, messages=USER)
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        await claude.messages.create(model="no-such-model", max_tokens=5, messages=USER)
    assert missing.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        await claude.messages.create(model="fast", max_tokens=0, messages=USER)
    assert "max_tokens" in str(bad.value)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gateway.url + "/v1/messages",
            json={"model": "fast", "messages": USER},
            headers={"x-api-key": APP_KEY},
        ) as answer,
    ):
        assert answer.status == 400
        assert await answer.json() == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
            "request_id": answer.headers["request-id"],
        }
    upstream.next(Behaviour(status=500, error={"message": "boom", "type": "server_error"}))
    with pytest.raises(anthropic.InternalServerError) as failed:
        await claude.messages.create(model="fast", max_tokens=5, messages=USER)
    assert failed.value.response.headers["request-id"]


async def test_every_model_failing_is_overloaded_529(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> None:
    raw = messages_config(upstream.url, tmp_path / "usage.jsonl")
    raw["models"]["gpt-up2"] = dict(raw["models"]["gpt-up"])
    raw["tiers"]["fast"] = ["gpt-up", "gpt-up2"]
    gateway = await start_gateway(raw)
    failing = Behaviour(status=503, error={"message": "down", "type": "server_error"})
    upstream.next(failing, failing)
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=APP_KEY, max_retries=0
    ) as sdk:
        with pytest.raises(anthropic.OverloadedError) as overloaded:
            await sdk.messages.create(model="fast", max_tokens=5, messages=USER)
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert overloaded.value.response.headers["retry-after"]


async def test_rate_limited_key_gets_rate_limit_error_with_retry_after(
    upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="gw-limited", max_retries=0
    ) as sdk:
        await sdk.messages.create(model="fast", max_tokens=5, messages=USER)
        with pytest.raises(anthropic.RateLimitError) as limited:
            await sdk.messages.create(model="fast", max_tokens=5, messages=USER)
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert float(limited.value.response.headers["retry-after"]) > 0


async def test_tpm_counts_the_anthropic_body_and_max_tokens(
    upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    """The token estimate is made from the Anthropic body: a long system prompt in text blocks
    and `max_tokens` count, so a request bigger than the plan's tpm is refused for good."""
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="gw-tokens", max_retries=0
    ) as sdk:
        upstream.next(Behaviour(words=["ok"], prompt_tokens=5, completion_tokens=1))
        await sdk.messages.create(model="fast", max_tokens=20, messages=USER)
        with pytest.raises(anthropic.RateLimitError) as by_max_tokens:
            await sdk.messages.create(model="fast", max_tokens=500, messages=USER)
        with pytest.raises(anthropic.RateLimitError) as by_system:
            await sdk.messages.create(
                model="fast",
                max_tokens=5,
                system=[{"type": "text", "text": "word " * 400}],
                messages=USER,
            )
    for refused in (by_max_tokens.value, by_system.value):
        assert refused.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert refused.response.headers["x-should-retry"] == "false"
    assert len(upstream.requests) == 1


async def test_a_failure_mid_stream_is_one_error_event(
    claude: anthropic.AsyncAnthropic, upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    upstream.next(Behaviour(words=["a", "b", "c", "d"], reset_after_events=3))
    body = {"model": "fast", "max_tokens": 10, "messages": USER, "stream": True}
    text = await post_stream(gateway, body)
    names = event_names(text)
    assert names[0] == "message_start" and names[-1] == "error"
    assert names.count("error") == 1 and "message_stop" not in names
    upstream.next(Behaviour(words=["a", "b", "c", "d"], reset_after_events=3))
    with pytest.raises(anthropic.APIStatusError):
        async with claude.messages.stream(model="fast", max_tokens=10, messages=USER) as stream:
            async for _ in stream.text_stream:
                pass


async def test_pings_while_the_first_token_is_slow(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> None:
    raw = messages_config(upstream.url, tmp_path / "usage.jsonl")
    raw["server"]["keepalive_s"] = 0.1
    gateway = await start_gateway(raw)
    upstream.next(Behaviour(first_event_delay_s=0.45, words=["late"]))
    body = {"model": "fast", "max_tokens": 10, "messages": USER, "stream": True}
    text = await post_stream(gateway, body)
    names = event_names(text)
    assert names[0] == "ping" and names.count("message_start") == 1
    assert names[-1] == "message_stop" and ": keep-alive" not in text


async def test_thinking_becomes_reasoning_effort_only_where_the_model_takes_it(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> None:
    raw = messages_config(upstream.url, tmp_path / "usage.jsonl")
    raw["models"]["gpt-reasoning"] = {**raw["models"]["gpt-up"], "reasoning": True}
    raw["tiers"]["thinking"] = ["gpt-reasoning"]
    raw["plans"]["pro"]["tiers"].append("thinking")
    gateway = await start_gateway(raw)
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=APP_KEY, max_retries=0, timeout=20
    ) as sdk:
        for model in ("thinking", "fast"):
            await sdk.messages.create(
                model=model,
                max_tokens=20000,
                thinking={"type": "enabled", "budget_tokens": 8000},
                messages=USER,
            )
    with_effort, without = (request.body for request in upstream.requests[-2:])
    assert with_effort["reasoning_effort"] == "medium"
    assert "reasoning_effort" not in without and "thinking" not in without
