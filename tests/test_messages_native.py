"""Native passthrough at `/v1/messages`: an `anthropic` provider gets the client's body as sent
(model id replaced, `anthropic-beta` forwarded) and the client gets the upstream's own bytes,
whole or event by event. The upstream here serves canned bytes, written unusually (spacing, key
order, fields no SDK knows) so that anything the gateway re-encoded would show."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web
from anthropic.types import MessageParam
from prometheus_client.parser import text_string_to_metric_families

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config
from tests.fakes.loopback import LoopbackServer
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

USER: list[MessageParam] = [{"role": "user", "content": "Hello"}]
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"

# A whole message as Anthropic answers one with thinking, a redacted block, citations and an
# unknown field, in a spelling (spaces, key order) no JSON encoder of the gateway would write.
MESSAGE = (
    b'{"id":"msg_01native","type":"message","role":"assistant","model":"claude-up-id",'
    b'"content":[{"type":"thinking","thinking":"Let me think.","signature":"'
    + SIGNATURE.encode()
    + b'"},{"type":"redacted_thinking","data":"EmwKAhgBEgy3va3pzix"},'
    b'{"type":"text","text":"The answer.","citations":[{"type":"char_location",'
    b'"cited_text":"x","document_index":0,"document_title":null,"start_char_index":0,'
    b'"end_char_index":1}]}],'
    b'"stop_reason":"end_turn","stop_sequence":null,'
    b'"usage":{"input_tokens":11,"cache_creation_input_tokens":5,"cache_read_input_tokens":40,'
    b'"output_tokens":9,"service_tier":"standard"},"x_future_field":  {"kept": true}}'
)


def sse(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


STREAM = [
    sse(
        "message_start",
        '{"type":"message_start","message":{"id":"msg_01stream","type":"message",'
        '"role":"assistant","model":"claude-up-id","content":[],"stop_reason":null,'
        '"stop_sequence":null,"usage":{"input_tokens":21,"cache_creation_input_tokens":0,'
        '"cache_read_input_tokens":100,"output_tokens":1}}}',
    ),
    sse(
        "content_block_start",
        '{"type":"content_block_start","index":0,'
        '"content_block":{"type":"thinking","thinking":"","signature":""}}',
    ),
    sse("ping", '{"type": "ping"}'),
    sse(
        "content_block_delta",
        '{"type":"content_block_delta","index":0,'
        '"delta":{"type":"thinking_delta","thinking":"Step one."}}',
    ),
    sse(
        "content_block_delta",
        '{"type":"content_block_delta","index":0,'
        f'"delta":{{"type":"signature_delta","signature":"{SIGNATURE}"}}}}',
    ),
    sse("content_block_stop", '{"type":"content_block_stop","index":0}'),
    sse(
        "content_block_start",
        '{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}',
    ),
    sse(
        "content_block_delta",
        '{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Done"}}',
    ),
    sse("some_future_event", '{"type":"some_future_event","what":"kept"}'),
    sse("content_block_stop", '{"type":"content_block_stop","index":1}'),
    sse(
        "message_delta",
        '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
        '"usage":{"output_tokens":15}}',
    ),
    sse("message_stop", '{"type":"message_stop"}'),
]


@dataclass
class Seen:
    path: str
    query: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class CannedAnthropic:
    """An Anthropic upstream that answers canned bytes and records what it was sent."""

    server: LoopbackServer = field(default_factory=LoopbackServer)
    seen: list[Seen] = field(default_factory=list)
    fail_with: tuple[int, str] | None = None  # status and error type, for every request
    stream_error_first: bool = False  # a stream whose first event is an overloaded error

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count)
        await self.server.serve(app)

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        self.seen.append(Seen(request.path, request.query_string, dict(request.headers), body))

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._record(request, body)
        if self.fail_with is not None:
            status, kind = self.fail_with
            error = {"type": "error", "error": {"type": kind, "message": f"canned {kind}"}}
            return web.json_response(error, status=status)
        if not body.get("stream"):
            return web.Response(body=MESSAGE, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if self.stream_error_first:
            await response.write(
                sse(
                    "error",
                    '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
                )
            )
            return response
        for event in STREAM:
            # Split mid-event too: the gateway must reassemble events, then relay them as sent.
            half = len(event) // 2
            await response.write(event[:half])
            await asyncio.sleep(0)
            await response.write(event[half:])
        return response

    async def _count(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        return web.json_response({"input_tokens": 4242})


@pytest.fixture
async def claude_upstream() -> AsyncIterator[CannedAnthropic]:
    canned = CannedAnthropic()
    await canned.start()
    yield canned
    await canned.server.stop()


def native_config(anthropic_url: str, openai_url: str, usage_path: Path) -> dict[str, Any]:
    raw = base_config(openai_url)
    raw["providers"]["claude"] = {
        "type": "anthropic",
        "base_url": anthropic_url,
        "api_key": "sk-ant-upstream",
        "headers": {"anthropic-beta": "configured-beta"},
    }
    raw["models"]["claude-up"] = {
        "provider": "claude",
        "model": "claude-up-id",
        "timeout": {"connect": 2, "first_token": 5, "total": 30},
    }
    raw["tiers"]["native"] = ["claude-up"]
    raw["tiers"]["mixed"] = ["claude-up", "gpt-up"]
    raw["aliases"]["claude-sonnet-4-6"] = "native"
    raw["aliases"]["claude-opus-4-1"] = "mixed"
    raw["plans"]["pro"]["tiers"] += ["native", "mixed"]
    raw["usage"] = {"sinks": {"jsonl": str(usage_path)}}
    return raw


@pytest.fixture
async def gateway(
    claude_upstream: CannedAnthropic,
    upstream: FakeOpenAI,
    start_gateway: StartGateway,
    tmp_path: Path,
) -> GatewayServer:
    return await start_gateway(
        native_config(claude_upstream.url, upstream.url, tmp_path / "usage.jsonl")
    )


@pytest.fixture
async def claude(gateway: GatewayServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=APP_KEY, max_retries=0, timeout=20
    ) as sdk:
        yield sdk


async def metric_samples(
    gateway: GatewayServer,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics by name and labels (the collectors are process-wide, so a test
    compares before and after)."""
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/metrics") as answer:
        text = await answer.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


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
    raise AssertionError(f"expected {count} usage records")


# What Claude Code sends: fields a translator would not know, thinking sent back with its
# signature, cache_control on system and tools.
CLIENT_BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 2048,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "output_config": {"effort": "high"},
    "metadata": {"user_id": "user_abc"},
    "tools": [
        {
            "name": "read_file",
            "description": "Read a file",
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
            "cache_control": {"type": "ephemeral"},
        }
    ],
    "messages": [
        {"role": "user", "content": "Read a.txt"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "I should read it.", "signature": SIGNATURE},
                {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a"}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "hello"}],
        },
    ],
}


async def test_whole_message_is_the_upstreams_bytes(
    gateway: GatewayServer, claude_upstream: CannedAnthropic
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gateway.url + "/v1/messages?beta=true",
            json=CLIENT_BODY,
            headers={
                "x-api-key": APP_KEY,
                "anthropic-version": "2023-06-01",
                "anthropic-beta": "interleaved-thinking-2025-05-14",
            },
        ) as answer,
    ):
        assert answer.status == 200
        assert await answer.read() == MESSAGE
        assert answer.headers["x-gateway-model"] == "claude-up"
        assert answer.headers["request-id"]
    (seen,) = claude_upstream.seen
    assert seen.body == {**CLIENT_BODY, "model": "claude-up-id"}
    assert seen.headers["x-api-key"] == "sk-ant-upstream"  # the provider's key, not the client's
    assert seen.headers["anthropic-beta"] == "configured-beta,interleaved-thinking-2025-05-14"
    (record,) = await usage_records(gateway, 1)
    assert record["api"] == "messages" and record["user"] == "user_abc"
    assert record["model"] == "claude-up"
    # Cache reads and writes count as prompt tokens, as OpenAI counts cached ones.
    assert (record["prompt_tokens"], record["completion_tokens"]) == (11 + 5 + 40, 9)
    assert record["cached_tokens"] == 40


async def test_the_sdk_reads_thinking_and_signature(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Think"}],
    )
    assert [block.type for block in message.content] == ["thinking", "redacted_thinking", "text"]
    assert message.content[0].signature == SIGNATURE  # type: ignore[union-attr]
    assert message.usage.cache_read_input_tokens == 40


async def test_stream_is_the_upstreams_events_byte_for_byte(
    gateway: GatewayServer, claude_upstream: CannedAnthropic
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gateway.url + "/v1/messages",
            json={**CLIENT_BODY, "stream": True},
            headers={"Authorization": f"Bearer {APP_KEY}"},
        ) as answer,
    ):
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        assert await answer.read() == b"".join(STREAM)
    assert claude_upstream.seen[0].body == {**CLIENT_BODY, "stream": True, "model": "claude-up-id"}
    (record,) = await usage_records(gateway, 1)
    assert record["api"] == "messages" and record["status"] == 200
    assert (record["prompt_tokens"], record["completion_tokens"]) == (121, 15)
    assert record["cached_tokens"] == 100


async def test_sdk_stream_with_thinking(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Think"}],
    ) as stream:
        text = "".join([chunk async for chunk in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Done"
    assert final.content[0].type == "thinking"
    assert final.content[0].signature == SIGNATURE
    assert final.usage.output_tokens == 15


async def test_count_tokens_is_the_upstreams_exact_count(
    claude: anthropic.AsyncAnthropic, claude_upstream: CannedAnthropic
) -> None:
    counted = await claude.messages.count_tokens(
        model="claude-sonnet-4-6",
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert counted.input_tokens == 4242
    (seen,) = claude_upstream.seen
    assert seen.path == "/v1/messages/count_tokens"
    assert seen.body == {
        "model": "claude-up-id",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello"}],
    }


async def test_upstream_errors_reach_the_sdk_as_its_own_classes(
    claude: anthropic.AsyncAnthropic, claude_upstream: CannedAnthropic
) -> None:
    claude_upstream.fail_with = (529, "overloaded_error")
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        await claude.messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=USER)
    assert overloaded.value.status_code == 529
    assert overloaded.value.response.headers["retry-after"]
    claude_upstream.fail_with = (429, "rate_limit_error")
    with pytest.raises(anthropic.RateLimitError):
        await claude.messages.create(model="claude-sonnet-4-6", max_tokens=16, messages=USER)


async def test_fallback_from_a_native_model_to_a_translated_one(
    claude: anthropic.AsyncAnthropic,
    claude_upstream: CannedAnthropic,
    upstream: FakeOpenAI,
    gateway: GatewayServer,
) -> None:
    claude_upstream.fail_with = (529, "overloaded_error")
    upstream.next(Behaviour(words=["From", " GPT"], prompt_tokens=8, completion_tokens=2))
    before = await metric_samples(gateway)
    raw = await claude.messages.with_raw_response.create(
        model="claude-opus-4-1", max_tokens=64, messages=USER
    )
    message = await raw.parse()
    assert raw.headers["x-gateway-model"] == "gpt-up"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert message.model == "claude-opus-4-1" and message.id.startswith("msg_")
    assert message.content[0].text == "From GPT"  # type: ignore[union-attr]
    assert upstream.requests[-1].body["messages"] == [{"role": "user", "content": "Hello"}]
    (record,) = await usage_records(gateway, 1)
    assert record["model"] == "gpt-up" and record["attempts"] == 2
    # Metrics as for chat: the fallback, the failed attempt, the answer and its tokens.
    after = await metric_samples(gateway)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    fallback = {"tier": "mixed", "from_model": "claude-up", "to_model": "gpt-up"}
    assert grew("gateway_fallbacks_total", **fallback, reason="5xx") == 1
    error = {"provider": "claude", "model": "claude-up", "reason": "5xx"}
    assert grew("gateway_upstream_errors_total", **error) == 1
    answered = {"tier": "mixed", "model": "gpt-up", "feature": "other", "status": "200"}
    assert grew("gateway_requests_total", **answered) == 1
    tokens = {"feature": "other", "model": "gpt-up"}
    assert grew("gateway_tokens_total", **tokens, kind="prompt") == 8
    assert grew("gateway_tokens_total", **tokens, kind="completion") == 2


async def test_stream_falls_back_when_the_first_event_is_an_error(
    claude: anthropic.AsyncAnthropic,
    claude_upstream: CannedAnthropic,
    upstream: FakeOpenAI,
) -> None:
    claude_upstream.stream_error_first = True
    upstream.next(Behaviour(words=["Still", " here"]))
    async with claude.messages.stream(
        model="claude-opus-4-1", max_tokens=64, messages=USER
    ) as stream:
        text = "".join([chunk async for chunk in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Still here"
    assert final.stop_reason == "end_turn"
    assert len(claude_upstream.seen) == 1 and upstream.requests[-1].body["stream"] is True
