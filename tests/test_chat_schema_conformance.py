"""Chat answers the gateway writes itself conform to OpenAI's published schemas.

The mock provider's answers and stream chunks (prose, tool calls, JSON, cut short by
`max_tokens`, with and without the usage chunk) and the Anthropic provider's translations (text,
parallel tool calls, `response_format: json_schema`) are read as the bytes the client gets and
checked against `CreateChatCompletionResponse` and `CreateChatCompletionStreamResponse`
(vendored in tests/data/openapi; see its README). OpenAI's schema types `system_fingerprint`
as a string, so where the gateway has none it leaves the field out rather than send null.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import StartGateway
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text, tool_use

SCHEMAS = Path(__file__).parent / "data" / "openapi"
ANSWER = "CreateChatCompletionResponse"
CHUNK = "CreateChatCompletionStreamResponse"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
PERSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["name", "age", "tags"],
            "additionalProperties": False,
        },
    },
}


@cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    defs = json.loads((SCHEMAS / "chat.json").read_text())["$defs"]
    return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": defs})


def check(payload: dict[str, Any], name: str) -> dict[str, Any]:
    validator(name).validate(payload)
    assert "system_fingerprint" not in payload or isinstance(payload["system_fingerprint"], str)
    return payload


def chunks_of(raw: bytes) -> list[dict[str, Any]]:
    """The stream's chunks, each checked; the stream ends with `[DONE]`."""
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert events[-1] == b"data: [DONE]"
    chunks = []
    for event in events[:-1]:
        if event.startswith(b":"):
            continue  # keep-alive comment
        assert event.startswith(b"data: "), event
        chunks.append(check(orjson.loads(event[len(b"data: ") :]), CHUNK))
    return chunks


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def answer_and_stream(
    http: aiohttp.ClientSession, gateway: GatewayServer, body: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The whole answer, the stream with the usage chunk, and the stream without it."""
    url = gateway.url + "/v1/chat/completions"
    async with http.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        answer = check(await response.json(), ANSWER)
    streams = []
    for options in ({"stream_options": {"include_usage": True}}, {}):
        async with http.post(url, json={**body, "stream": True, **options}) as response:
            assert response.status == 200, await response.text()
            streams.append(chunks_of(await response.read()))
    return answer, streams[0], streams[1]


# --- the mock ----------------------------------------------------------------------------


def mock_config() -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {"mock": {"type": "mock"}},
        "models": {"mock-model": {"provider": "mock"}},
        "tiers": {"demo": ["mock-model"]},
        "routing": {"default_tier": "demo", "retries": 0},
    }


USER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize(
    ("extra", "finish_reason"),
    [
        ({}, "stop"),
        ({"max_tokens": 3}, "length"),
        ({"tools": [WEATHER_TOOL]}, "tool_calls"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "none"}, "stop"),
        ({"tools": [WEATHER_TOOL], "max_tokens": 4}, "length"),
        ({"response_format": PERSON_FORMAT}, "stop"),
        ({"response_format": {"type": "json_object"}}, "stop"),
    ],
    ids=[
        "prose",
        "length",
        "tool-call",
        "tool-choice-none",
        "tool-call-cut",
        "json",
        "json-object",
    ],
)
async def test_mock_answers_and_chunks_conform(
    start_gateway: StartGateway,
    http: aiohttp.ClientSession,
    extra: dict[str, Any],
    finish_reason: str,
) -> None:
    gateway = await start_gateway(mock_config())
    answer, with_usage, without_usage = await answer_and_stream(
        http, gateway, {"model": "demo", "messages": USER, **extra}
    )
    assert answer["choices"][0]["finish_reason"] == finish_reason
    assert "system_fingerprint" not in answer
    for chunks in (with_usage, without_usage):
        finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finishes[-1] == finish_reason and set(finishes[:-1]) == {None}
        assert all("system_fingerprint" not in chunk for chunk in chunks)
    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"] == answer["usage"]
    # No usage chunk for a client that did not ask (the gateway asks upstream for it).
    assert all(chunk["choices"] and chunk.get("usage") is None for chunk in without_usage)


# --- Anthropic, translated ---------------------------------------------------------------


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic()
    await fake.start()
    yield fake
    await fake.stop()


def anthropic_config(claude_url: str) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {
            "anthropic": {"type": "anthropic", "base_url": claude_url, "api_key": "sk-ant-test"}
        },
        "models": {"claude": {"provider": "anthropic", "model": "claude-3-5-haiku-latest"}},
        "tiers": {"fast": ["claude"]},
        "routing": {"default_tier": "fast", "retries": 0},
    }


ANTHROPIC_CASES: dict[str, tuple[Reply, dict[str, Any], str]] = {
    "text": (
        Reply(content=[text("Sunny in Paris.")], cache_read_input_tokens=5),
        {},
        "stop",
    ),
    "tools": (
        Reply(
            content=[
                text("Checking."),
                tool_use("toolu_1", "get_weather", {"city": "Paris", "unit": "celsius"}),
                tool_use("toolu_2", "get_weather", {"city": "Rome", "unit": "celsius"}),
            ],
            stop_reason="tool_use",
        ),
        {"tools": [WEATHER_TOOL]},
        "tool_calls",
    ),
    "json": (
        Reply(
            content=[tool_use("toolu_3", "person", {"name": "Ada", "age": 36, "tags": []})],
            stop_reason="tool_use",
        ),
        {"response_format": PERSON_FORMAT},
        "stop",
    ),
    "length": (Reply(content=[text("It is")], stop_reason="max_tokens"), {}, "length"),
}


@pytest.mark.parametrize("case", list(ANTHROPIC_CASES))
async def test_anthropic_translations_conform(
    start_gateway: StartGateway, http: aiohttp.ClientSession, claude: FakeAnthropic, case: str
) -> None:
    reply, extra, finish_reason = ANTHROPIC_CASES[case]
    claude.script(case, reply)
    gateway = await start_gateway(anthropic_config(claude.url))
    messages = [{"role": "user", "content": f"What is the weather in Paris? fake:{case}"}]
    answer, with_usage, without_usage = await answer_and_stream(
        http, gateway, {"model": "fast", "messages": messages, **extra}
    )
    assert answer["choices"][0]["finish_reason"] == finish_reason
    assert "system_fingerprint" not in answer
    for chunks in (with_usage, without_usage):
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == (
            finish_reason
        )
        assert all("system_fingerprint" not in chunk for chunk in chunks)
    assert with_usage[-1]["usage"] == answer["usage"]
    if case == "json":
        content = json.loads(answer["choices"][0]["message"]["content"])
        assert content == {"name": "Ada", "age": 36, "tags": []}
