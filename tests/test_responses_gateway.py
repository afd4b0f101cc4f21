"""`POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}` through the gateway, with the
real openai client: native to an upstream that speaks the Responses API (the fake OpenAI's
`/v1/responses`), translated to chat for a chat-only upstream, an Anthropic one and the mock;
streams checked event by event against OpenAI's schemas; `previous_response_id` across every
kind of backend; stored responses per key, in memory and in a real Redis shared by two
gateways; usage records."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import openai
import pytest
from openai.types.responses import FunctionToolParam
from openai.types.responses.response_input_param import ItemReference
from pydantic import BaseModel

from gateway.config import ResponsesConfig
from gateway.server.serving import GatewayServer
from gateway.store.responses import MemoryResponseStore, StoredResponse
from tests.conftest import APP_KEY, FREE_KEY, StartGateway, base_config
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.redis_server import RedisServer, redis_server
from tests.test_responses_translation import check_response, parse_events

__all__ = ["redis_server"]  # the fixture, imported for this module's tests

OTHER_KEY = "gw-test-other-key"
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def responses_config(
    openai_url: str, anthropic_url: str, usage_path: Path | None = None
) -> dict[str, Any]:
    raw = base_config(openai_url)
    raw["providers"]["native"] = {
        "type": "openai",
        "base_url": openai_url,
        "api_key": "sk-native",
        "responses": True,
    }
    raw["providers"]["claude"] = {
        "type": "anthropic",
        "base_url": anthropic_url,
        "api_key": "sk-ant-test",
    }
    raw["models"]["native-model"] = {"provider": "native", "model": "gpt-native-id"}
    raw["models"]["claude-model"] = {"provider": "claude", "model": "claude-x"}
    raw["tiers"] |= {
        "native": ["native-model"],
        "claude": ["claude-model"],
        # A native model that fails, then a chat-only one: one Responses answer either way.
        "native-then-chat": ["native-model", "gpt-up"],
    }
    raw["routing"]["fallback_on"] = ["5xx"]
    raw["plans"]["pro"]["tiers"] = list(raw["tiers"])
    raw["keys"].append({"name": "other", "key": OTHER_KEY, "plan": "pro"})
    if usage_path is not None:
        raw["usage"] = {"sinks": {"jsonl": str(usage_path)}}
    return raw


@pytest.fixture
async def claude_upstream() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gateway(
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    start_gateway: StartGateway,
    tmp_path: Path,
) -> GatewayServer:
    raw = responses_config(upstream.url, claude_upstream.url, tmp_path / "usage.jsonl")
    return await start_gateway(raw)


def sdk(gateway: GatewayServer, key: str = APP_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=20)


@pytest.fixture
async def client(gateway: GatewayServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(gateway) as client:
        yield client


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {APP_KEY}"}) as session:
        yield session


async def raw_stream(
    http: aiohttp.ClientSession, gateway: GatewayServer, body: dict[str, Any]
) -> list[bytes]:
    """The stream's events as sent (keep-alive comments left out)."""
    async with http.post(gateway.url + "/v1/responses", json={**body, "stream": True}) as answer:
        assert answer.status == 200, await answer.text()
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        raw = await answer.read()
    return [e + b"\n\n" for e in raw.split(b"\n\n") if e.strip() and not e.startswith(b":")]


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


# --- answers -----------------------------------------------------------------------------


async def test_a_translated_answer_is_a_response_object(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    upstream.next(Behaviour(words=["Hi", " there"], prompt_tokens=9, cached_tokens=4))
    response = await client.responses.create(
        model="fast",
        input="Say hi",
        instructions="Be brief.",
        max_output_tokens=50,
        temperature=0.2,
        metadata={"trace": "t-1"},
    )
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == "Hi there"
    assert response.model == "fast" and response.metadata == {"trace": "t-1"}
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (9, 2)
    assert response.usage.input_tokens_details.cached_tokens == 4
    check_response(response.model_dump(mode="json", exclude_unset=True))
    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "upstream-model-id"
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
    ]
    assert sent.body["max_tokens"] == 50 and sent.body["temperature"] == 0.2
    (record,) = await flushed_records(gateway, 1)
    assert record["api"] == "responses" and record["model"] == "gpt-up"
    assert (record["prompt_tokens"], record["completion_tokens"]) == (9, 2)


async def test_a_native_answer_is_the_upstreams_own(
    http: aiohttp.ClientSession, upstream: FakeOpenAI, gateway: GatewayServer
) -> None:
    body = {"model": "native", "input": "Hello", "reasoning": {"effort": "low"}, "x_new": 1}
    async with http.post(gateway.url + "/v1/responses", json=body) as answer:
        assert answer.status == 200
        got = await answer.json()
    sent = upstream.requests[-1]
    assert sent.path == "/v1/responses"
    assert sent.body == {**body, "model": "gpt-native-id"}  # as sent, unknown fields too
    assert sent.headers["Authorization"] == "Bearer sk-native"
    assert got == upstream.responses_api.kept[got["id"]]
    (record,) = await flushed_records(gateway, 1)
    assert record["api"] == "responses" and record["model"] == "native-model"
    assert record["prompt_tokens"] == 11


async def test_anthropic_and_the_mock_answer_through_translation(
    client: openai.AsyncOpenAI, claude_upstream: FakeAnthropic
) -> None:
    claude_upstream.next(Reply(input_tokens=20, output_tokens=5))
    response = await client.responses.create(model="claude", input="Hi", instructions="Brief")
    assert response.output_text == "Hello from Claude"
    assert response.usage is not None and response.usage.input_tokens == 20
    assert claude_upstream.last_body["system"] == "Brief"
    check_response(response.model_dump(mode="json", exclude_unset=True))
    mock = await client.responses.create(model="demo", input="Hi")
    assert mock.status == "completed" and mock.output_text


# --- streams -----------------------------------------------------------------------------


@pytest.mark.parametrize("tier", ["fast", "native", "claude", "demo"])
async def test_streams_are_the_typed_events_in_order(
    tier: str, http: aiohttp.ClientSession, gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    events = parse_events(await raw_stream(http, gateway, {"model": tier, "input": "Hi"}))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert kinds.index("response.output_item.added") < kinds.index("response.output_text.delta")
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["usage"]["output_tokens"] > 0
    if tier == "native":
        assert upstream.requests[-1].path == "/v1/responses"
        assert upstream.requests[-1].body["stream"] is True


async def test_a_native_stream_is_relayed_byte_for_byte(
    http: aiohttp.ClientSession, gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    events = await raw_stream(http, gateway, {"model": "native", "input": "Hi"})
    response_id = json.loads(events[-1].split(b"data: ", 1)[1])["response"]["id"]
    kept = upstream.responses_api.kept[response_id]
    assert json.loads(events[-1].split(b"data: ", 1)[1])["response"] == kept
    assert events[0].startswith(b"event: response.created\ndata: {")


async def test_the_sdk_stream_helper_and_usage_record(
    client: openai.AsyncOpenAI, gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(words=["One", " two"], prompt_tokens=7))
    async with client.responses.stream(model="fast", input="Count") as stream:
        deltas = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        final = await stream.get_final_response()
    assert deltas == ["One", " two"] and final.output_text == "One two"
    (record,) = await flushed_records(gateway, 1)
    assert record["api"] == "responses" and record["stream"] is True
    assert (record["prompt_tokens"], record["completion_tokens"]) == (7, 2)


async def test_a_failure_mid_stream_ends_it_in_the_responses_way(
    http: aiohttp.ClientSession, gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    # An in-band error from a chat upstream: `response.failed`, and the stream ends.
    upstream.next(Behaviour(words=["a", "b", "c"], error_event_after=2))
    events = parse_events(await raw_stream(http, gateway, {"model": "fast", "input": "Hi"}))
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    # The connection cut: an `error` event numbered after the last one.
    upstream.next(Behaviour(words=["a", "b", "c"], reset_after_events=3))
    raw = await raw_stream(http, gateway, {"model": "fast", "input": "Hi"})
    good = parse_events(raw[:-1])
    name, data = raw[-1][:-2].split(b"\n")
    assert name == b"event: error"
    error = json.loads(data[len(b"data: ") :])
    assert error["type"] == "error" and error["sequence_number"] == len(good)


async def test_a_failing_native_model_falls_back_to_a_chat_one(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(status=500), Behaviour(words=["From", " chat"]))
    response = await client.responses.create(model="native-then-chat", input="Hi")
    assert response.output_text == "From chat"
    assert [r.path for r in upstream.requests] == ["/v1/responses", "/v1/chat/completions"]
    upstream.next(Behaviour(status=500), Behaviour(words=["Streamed"]))
    async with client.responses.stream(model="native-then-chat", input="Hi") as stream:
        final = await stream.get_final_response()
    assert final.output_text == "Streamed"


# --- tools and structured output ---------------------------------------------------------


async def test_a_function_tool_round_trip(client: openai.AsyncOpenAI, upstream: FakeOpenAI) -> None:
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'}
    upstream.next(Behaviour(words=[], tool_calls=[call]), Behaviour(words=["It is", " cold"]))
    first = await client.responses.create(
        model="fast", input="Weather in Oslo?", tools=[WEATHER], tool_choice="auto"
    )
    (item,) = first.output
    assert item.type == "function_call" and item.call_id == "call_1"
    assert item.name == "get_weather" and json.loads(item.arguments) == {"city": "Oslo"}
    assert upstream.requests[-1].body["tools"][0]["function"]["name"] == "get_weather"
    second = await client.responses.create(
        model="fast",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": "call_1", "output": '{"c": -3}'}],
        tools=[WEATHER],
    )
    assert second.output_text == "It is cold"
    messages = upstream.requests[-1].body["messages"]
    assert messages[0] == {"role": "user", "content": "Weather in Oslo?"}
    assert messages[1]["role"] == "assistant"
    assert messages[1]["tool_calls"][0]["id"] == "call_1"
    assert messages[2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"c": -3}'}


async def test_the_mock_calls_the_tool_and_answers_json(client: openai.AsyncOpenAI) -> None:
    called = await client.responses.create(model="demo", input="weather please", tools=[WEATHER])
    (item,) = called.output
    assert item.type == "function_call"
    jsonschema.validate(json.loads(item.arguments), WEATHER["parameters"] or {})
    done = await client.responses.create(
        model="demo",
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": item.call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert done.output_text and done.output[0].type == "message"

    class City(BaseModel):
        name: str
        population: int

    parsed = await client.responses.parse(model="demo", input="A city", text_format=City)
    assert isinstance(parsed.output_parsed, City)


# --- previous_response_id and the store --------------------------------------------------


async def test_previous_response_id_works_across_every_kind_of_backend(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(words=["First"]))
    first = await client.responses.create(model="native", input="One")
    # The same native provider keeps it: the id goes through as sent.
    upstream.next(Behaviour(words=["Second"]))
    second = await client.responses.create(
        model="native", input="Two", previous_response_id=first.id
    )
    assert upstream.requests[-1].body["previous_response_id"] == first.id
    assert upstream.requests[-1].body["input"] == "Two"
    # A chat-only model gets every turn rebuilt.
    upstream.next(Behaviour(words=["Third"]))
    third = await client.responses.create(
        model="fast", input="Three", previous_response_id=second.id
    )
    assert third.previous_response_id == second.id
    assert upstream.requests[-1].body["messages"] == [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "First"},
        {"role": "user", "content": "Two"},
        {"role": "assistant", "content": "Second"},
        {"role": "user", "content": "Three"},
    ]
    # Back to the native provider, which never saw the third: the turns as input items.
    upstream.next(Behaviour(words=["Fourth"]))
    await client.responses.create(model="native", input="Four", previous_response_id=third.id)
    sent = upstream.requests[-1].body
    assert "previous_response_id" not in sent
    texts = [
        (
            item["role"],
            item["content"] if isinstance(item["content"], str) else item["content"][0]["text"],
        )
        for item in sent["input"]
    ]
    assert texts == [
        ("user", "One"),
        ("assistant", "First"),
        ("user", "Two"),
        ("assistant", "Second"),
        ("user", "Three"),
        ("assistant", "Third"),
        ("user", "Four"),
    ]
    assert all("id" not in item for item in sent["input"])


async def test_item_references_resolve_from_the_gateways_store(
    client: openai.AsyncOpenAI,
    http: aiohttp.ClientSession,
    gateway: GatewayServer,
    upstream: FakeOpenAI,
) -> None:
    """An `item_reference` (what the Vercel AI SDK sends for an earlier assistant message)
    to an item the gateway made is spelled out for any upstream that did not make it; one it
    cannot resolve is refused by a translated model, not silently dropped."""
    upstream.next(Behaviour(words=["Translated"]))
    first = await client.responses.create(model="fast", input="One")
    item_id = first.output[0].id
    assert item_id is not None
    asked: list[Any] = [
        {"role": "user", "content": "One"},
        {"type": "item_reference", "id": item_id},
        {"role": "user", "content": "Two"},
    ]
    upstream.next(Behaviour(words=["Native"]))
    await client.responses.create(model="native", input=asked)
    sent = upstream.requests[-1].body["input"]
    part = {"type": "output_text", "text": "Translated", "annotations": [], "logprobs": []}
    # The item itself, without the id and status the upstream would take for its own.
    assert sent[1] == {"type": "message", "role": "assistant", "content": [part]}
    upstream.next(Behaviour(words=["Chat"]))
    await client.responses.create(model="fast", input=asked)
    assert upstream.requests[-1].body["messages"][1] == {
        "role": "assistant",
        "content": "Translated",
    }
    # Another key cannot resolve this key's items.
    async with sdk(gateway, OTHER_KEY) as other:
        with pytest.raises(openai.BadRequestError) as refused:
            await other.responses.create(model="fast", input=asked)
    assert refused.value.body["param"] == "input"  # type: ignore[index]
    assert item_id in refused.value.message
    calls = len(upstream.requests)
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(
            model="fast", input=[{"type": "item_reference", "id": "msg_unknown"}]
        )
    assert len(upstream.requests) == calls  # refused before any upstream was asked
    # A native upstream may know an item the gateway does not: the reference goes as sent.
    answer = await http.post(
        gateway.url + "/v1/responses",
        json={"model": "native", "input": [{"type": "item_reference", "id": "msg_unknown"}]},
    )
    assert answer.status == 400 and upstream.requests[-1].body["input"] == [
        {"type": "item_reference", "id": "msg_unknown"}
    ]


async def test_a_replayed_turn_still_names_the_response_it_continues(
    client: openai.AsyncOpenAI, http: aiohttp.ClientSession, gateway: GatewayServer
) -> None:
    """Continuing a translated response on a native model sends the upstream the earlier
    turns instead of the id; the answer, streamed or not, still says what it continues."""
    first = await client.responses.create(model="demo", input="One")
    answered = await client.responses.create(
        model="native", input="Two", previous_response_id=first.id
    )
    assert answered.previous_response_id == first.id
    assert (await client.responses.retrieve(answered.id)).previous_response_id == first.id
    events = await raw_stream(
        http, gateway, {"model": "native", "input": "Three", "previous_response_id": first.id}
    )
    carrying = [json.loads(e.split(b"data: ", 1)[1]) for e in events if b'"response":{' in e]
    assert [e["type"] for e in carrying] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]
    assert all(e["response"]["previous_response_id"] == first.id for e in carrying)


async def test_a_streamed_response_can_be_continued_at_once(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(words=["Streamed"]))
    async with client.responses.stream(model="fast", input="One") as stream:
        final = await stream.get_final_response()
    upstream.next(Behaviour(words=["Next"]))
    await client.responses.create(model="fast", input="Two", previous_response_id=final.id)
    assert upstream.requests[-1].body["messages"][1] == {
        "role": "assistant",
        "content": "Streamed",
    }


async def test_stored_responses_belong_to_their_key(
    client: openai.AsyncOpenAI, gateway: GatewayServer
) -> None:
    response = await client.responses.create(model="demo", input="Keep me")
    got = await client.responses.retrieve(response.id)
    assert got.id == response.id and got.output_text == response.output_text
    async with sdk(gateway, OTHER_KEY) as other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.delete(response.id)
        with pytest.raises(openai.BadRequestError) as refused:
            await other.responses.create(model="demo", input="x", previous_response_id=response.id)
        assert refused.value.code == "previous_response_not_found"
    await client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(response.id)
    unstored = await client.responses.create(model="demo", input="Forget me", store=False)
    assert unstored.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)


async def test_bad_requests_get_openai_errors(
    client: openai.AsyncOpenAI, http: aiohttp.ClientSession, gateway: GatewayServer
) -> None:
    url = gateway.url + "/v1/responses"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "demo"}, "input"),
        ({"model": "demo", "input": 5}, "input"),
        ({"model": "demo", "input": "x", "stream": "yes"}, "stream"),
        ({"model": "demo", "input": "x", "background": True}, "background"),
        (
            {"model": "demo", "input": "x", "previous_response_id": "resp_nope"},
            "previous_response_id",
        ),
    ]
    for body, param in cases:
        async with http.post(url, json=body) as answer:
            assert answer.status == 400, body
            error = (await answer.json())["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == param
    async with http.post(url, json={"model": "nope", "input": "x"}) as answer:
        assert answer.status == 404
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.post(url, json={"model": "demo", "input": "x"}) as answer,
    ):
        assert answer.status == 401
    async with sdk(gateway, FREE_KEY) as free:
        with pytest.raises(openai.PermissionDeniedError):
            await free.responses.create(model="fast", input="x")


def test_the_memory_store_is_bounded_by_size_and_age() -> None:
    async def run() -> None:
        store = MemoryResponseStore()
        config = ResponsesConfig.model_validate({"max_memory_mb": 0.01})  # about 10 kB
        for i in range(40):
            response = {"id": f"resp_{i}", "output": [], "padding": "x" * 500}
            await store.save(StoredResponse("app", response, []), config)
        assert store.size_bytes <= 0.01 * 1024 * 1024
        assert await store.get("resp_0", "app") is None  # the oldest went first
        assert await store.get("resp_39", "app") is not None
        assert await store.get("resp_39", "someone-else") is None
        short = ResponsesConfig.model_validate({"ttl_s": 0.05})
        await store.save(StoredResponse("app", {"id": "resp_short", "output": []}, []), short)
        await asyncio.sleep(0.1)
        assert await store.get("resp_short", "app") is None

    asyncio.run(run())


async def test_redis_keeps_responses_for_every_replica(
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    start_gateway: StartGateway,
    redis_server: RedisServer,
) -> None:
    raw = responses_config(upstream.url, claude_upstream.url)
    raw["redis"] = {"url": redis_server.url}
    raw["responses"] = {"ttl_s": 120}
    one, two = await start_gateway(raw), await start_gateway(raw)
    async with sdk(one) as first, sdk(two) as second:
        upstream.next(Behaviour(words=["Remembered"]))
        response = await first.responses.create(model="fast", input="One")
        assert (await second.responses.retrieve(response.id)).output_text == "Remembered"
        upstream.next(Behaviour(words=["Again"]))
        await second.responses.create(model="fast", input="Two", previous_response_id=response.id)
        assert upstream.requests[-1].body["messages"][1]["content"] == "Remembered"
        # Item references resolve on every replica too.
        reference: ItemReference = {"type": "item_reference", "id": response.output[0].id or ""}
        upstream.next(Behaviour(words=["Referenced"]))
        await second.responses.create(model="fast", input=[reference])
        assert upstream.requests[-1].body["messages"] == [
            {"role": "assistant", "content": "Remembered"}
        ]
        ttl = int(redis_server.command("TTL", f"gw:response:{response.id}").lstrip(b":"))
        assert 0 < ttl <= 120
        await second.responses.delete(response.id)
        with pytest.raises(openai.NotFoundError):
            await first.responses.retrieve(response.id)
        # Redis down: a lookup is a 503 the SDK may retry; an answer still goes out.
        redis_server.stop()
        with pytest.raises(openai.InternalServerError) as down:
            await first.responses.retrieve("resp_any")
        assert down.value.status_code == 503
        upstream.next(Behaviour(words=["Unstored"]))
        answered = await first.responses.create(model="fast", input="Still here")
        assert answered.output_text == "Unstored"
