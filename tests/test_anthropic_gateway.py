"""The real openai client at the gateway, with an Anthropic model in the chain: answers come
back as OpenAI's, streams included, and Anthropic failures fall back like any other."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import StartGateway
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text, tool_use
from tests.fakes.openai_upstream import FakeOpenAI

MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the weather in Paris and Rome?"},
]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic()
    await fake.start()
    yield fake
    await fake.stop()


def config(claude_url: str, openai_url: str) -> dict[str, Any]:
    timeout = {"connect": 1, "first_token": 2, "total": 10}
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "providers": {
            "anthropic": {"type": "anthropic", "base_url": claude_url, "api_key": "sk-ant-test"},
            "openai": {"type": "openai", "base_url": openai_url},
        },
        "models": {
            "claude-haiku": {
                "provider": "anthropic",
                "model": "claude-3-5-haiku-latest",
                "timeout": timeout,
            },
            "gpt-mini": {"provider": "openai", "model": "gpt-4o-mini", "timeout": timeout},
        },
        "tiers": {"fast": ["claude-haiku", "gpt-mini"], "claude-only": ["claude-haiku"]},
        "routing": {"retries": 0},
    }


@pytest.fixture
async def gateway(
    claude: FakeAnthropic, upstream: FakeOpenAI, start_gateway: StartGateway
) -> GatewayServer:
    return await start_gateway(config(claude.url, upstream.url))


@pytest.fixture
async def client(gateway: GatewayServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0) as sdk:
        yield sdk


async def test_chat_through_anthropic(client: openai.AsyncOpenAI, claude: FakeAnthropic) -> None:
    claude.next(Reply(cache_read_input_tokens=100, input_tokens=12, output_tokens=7))
    raw = await client.chat.completions.with_raw_response.create(
        model="fast", messages=MESSAGES, max_tokens=50, stop=["END"], temperature=0.2
    )
    completion = raw.parse()
    assert raw.headers["x-gateway-model"] == "claude-haiku"
    assert completion.choices[0].message.content == "Hello from Claude"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 112
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 100
    sent = claude.last_body
    assert sent["model"] == "claude-3-5-haiku-latest"
    assert sent["system"] == "Be brief."
    assert sent["max_tokens"] == 50 and sent["stop_sequences"] == ["END"]
    headers = {k.lower(): v for k, v in claude.requests[-1].headers.items()}
    assert headers["x-api-key"] == "sk-ant-test" and headers["anthropic-version"]


async def test_streamed_parallel_tool_calls_through_anthropic(
    client: openai.AsyncOpenAI, claude: FakeAnthropic
) -> None:
    claude.next(
        Reply(
            content=[
                text("Checking."),
                tool_use("toolu_1", "get_weather", {"city": "Paris"}),
                tool_use("toolu_2", "get_weather", {"city": "Rome"}),
            ],
            stop_reason="tool_use",
        )
    )
    async with client.chat.completions.stream(
        model="fast",
        messages=MESSAGES,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        stream_options={"include_usage": True},
    ) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content == "Checking."
    assert message.tool_calls is not None
    calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]
    assert calls == [
        ("toolu_1", "get_weather", {"city": "Paris"}),
        ("toolu_2", "get_weather", {"city": "Rome"}),
    ]
    assert final.usage is not None and final.usage.completion_tokens == 7
    assert claude.last_body["tools"][0]["input_schema"]["required"] == ["city"]


async def test_tool_results_go_back_as_one_user_turn(
    client: openai.AsyncOpenAI, claude: FakeAnthropic
) -> None:
    history: list[Any] = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "rain"},
    ]
    await client.chat.completions.create(model="fast", messages=history, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    turns = claude.last_body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    results = turns[-1]["content"]
    assert [(r["type"], r["tool_use_id"]) for r in results] == [
        ("tool_result", "toolu_1"),
        ("tool_result", "toolu_2"),
    ]


@pytest.mark.parametrize("status", [529, 500, 429])
async def test_anthropic_failures_fall_back_to_the_next_model(
    client: openai.AsyncOpenAI, claude: FakeAnthropic, upstream: FakeOpenAI, status: int
) -> None:
    claude.next(Reply(status=status))
    raw = await client.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
    assert raw.headers["x-gateway-model"] == "gpt-mini"
    assert raw.parse().choices[0].message.content == "Hello from the upstream"


async def test_anthropic_400_is_the_clients_error(
    client: openai.AsyncOpenAI, claude: FakeAnthropic, upstream: FakeOpenAI
) -> None:
    claude.next(Reply(status=400, error_message="messages: text content blocks must be non-empty"))
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="fast", messages=MESSAGES)
    assert "non-empty" in caught.value.message
    assert upstream.requests == []


async def test_unsupported_parameters_move_on_to_a_model_that_supports_them(
    client: openai.AsyncOpenAI, claude: FakeAnthropic, upstream: FakeOpenAI
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="fast", messages=MESSAGES, n=2, logprobs=True
    )
    assert raw.headers["x-gateway-model"] == "gpt-mini"
    assert raw.headers["x-gateway-attempts"] == "1"
    assert upstream.requests[-1].body["n"] == 2
    assert claude.requests == []


async def test_unsupported_parameters_are_a_400_when_no_model_supports_them(
    client: openai.AsyncOpenAI, claude: FakeAnthropic
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="claude-only", messages=MESSAGES, n=2)
    assert caught.value.param == "n"
    assert claude.requests == []


async def test_a_mid_stream_anthropic_error_is_an_in_band_error(
    client: openai.AsyncOpenAI, claude: FakeAnthropic, upstream: FakeOpenAI
) -> None:
    # Paced, so the first events reach the client before the error does.
    claude.next(
        Reply(content=[text("A long answer that breaks")], error_event_after=4, pace_s=0.05)
    )
    stream = await client.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            received.append(chunk)
    assert received
    assert upstream.requests == []  # no second model's text after the first's
