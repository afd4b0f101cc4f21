"""How a committed stream ends when the upstream does not end it well: an upstream that stops
without `[DONE]` (or without `message_stop`) gets an in-band `upstream_bad_response` error
instead of a clean end that would pass the answer off as whole; an event the gateway cannot
parse is relayed when it need not read it, never corrupting the connection; and content that
arrived in the same read as an upstream's error reaches the client before the error."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

CHAT = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def claude_upstream() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(api_key="")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gateway(
    upstream: FakeOpenAI, claude_upstream: FakeAnthropic, start_gateway: StartGateway
) -> GatewayServer:
    raw = base_config(upstream.url)
    raw["providers"]["claude"] = {"type": "anthropic", "base_url": claude_upstream.url}
    raw["models"]["claude-model"] = {"provider": "claude"}
    raw["tiers"]["claude"] = ["claude-model"]
    raw["plans"]["pro"]["tiers"].append("claude")
    return await start_gateway(raw)


async def stream(gateway: GatewayServer, path: str, body: dict[str, Any]) -> list[bytes]:
    headers = {"Authorization": f"Bearer {APP_KEY}", "anthropic-version": "2023-06-01"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.post(gateway.url + path, json=body) as answer,
    ):
        assert answer.status == 200
        raw = await answer.read()  # the whole chunked body, properly ended
    return [e for e in raw.split(b"\n\n") if e]


def data_of(event: bytes) -> Any:
    return json.loads(event.split(b"data: ", 1)[1])


async def test_a_chat_stream_without_done_ends_with_an_in_band_error(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(words=["a", "b"], no_done=True))
    events = await stream(gateway, "/v1/chat/completions", CHAT)
    assert b"[DONE]" not in b"".join(events)
    contents = [data_of(e)["choices"][0]["delta"].get("content") for e in events[1:-1]]
    assert contents[:2] == ["a", "b"]  # what was sent, then the error
    error = data_of(events[-1])["error"]
    assert error["code"] == "upstream_bad_response" and "incomplete" in error["message"]


async def test_a_messages_stream_cut_before_message_stop_ends_with_an_error_event(
    gateway: GatewayServer, claude_upstream: FakeAnthropic
) -> None:
    claude_upstream.next(Reply(cut_after=4))
    body = {**CHAT, "model": "claude", "max_tokens": 50}
    events = await stream(gateway, "/v1/messages", body)
    assert events[-1].startswith(b"event: error\n")
    assert data_of(events[-1])["type"] == "error"
    assert not any(e.startswith(b"event: message_stop") for e in events)


async def test_an_unparsable_event_is_relayed_and_the_stream_goes_on(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}],
    }
    good = b"data: " + json.dumps(chunk).encode() + b"\n\n"
    broken = b'data: {"usage": {broken\n\n'
    upstream.next(Behaviour(raw_body=good + broken + good + b"data: [DONE]\n\n"))
    events = await stream(gateway, "/v1/chat/completions", CHAT)
    assert events == [good[:-2], broken[:-2], good[:-2], b"data: [DONE]"]


async def test_content_before_an_error_in_the_same_read_reaches_the_client_first(
    gateway: GatewayServer, claude_upstream: FakeAnthropic
) -> None:
    claude_upstream.next(
        Reply(content=[text("Hello there, this is Claude")], chunk_chars=4, error_event_after=7)
    )
    events = await stream(gateway, "/v1/chat/completions", {**CHAT, "model": "claude"})
    texts = [
        c["choices"][0]["delta"].get("content") or ""
        for c in map(data_of, events[:-1])
        if c.get("choices")
    ]
    assert "".join(texts).startswith("Hell")  # the deltas before the error
    assert "error" in data_of(events[-1])
