"""Streams that survive for every ingress API (issue 14 item 3): the continuation is spliced
below the translators, so a Messages client (the anthropic SDK) sees one Anthropic event
sequence (one message_start, block indexes continuing, one message_stop), a Responses client
one response.created ... one response.completed with continuous sequence numbers, and a
legacy Completions client one text_completion stream."""

from __future__ import annotations

from pathlib import Path

import anthropic
import openai
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.midstream import STORY
from tests.fakes.openai_upstream import FakeOpenAI
from tests.test_midstream import midstream_config

PROMPT = "Tell the story. fault:mid_reset fake:mid_reset"


@pytest.fixture
async def gateway(
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    start_gateway: StartGateway,
    tmp_path: Path,
) -> GatewayServer:
    raw = midstream_config(upstream.url, claude_upstream.url, tmp_path / "usage.jsonl")
    return await start_gateway(raw)


@pytest.mark.parametrize("tier", ["fast", "mixed"])
async def test_a_messages_stream_is_one_anthropic_event_sequence(
    gateway: GatewayServer, tier: str
) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        events = []
        async with client.messages.stream(
            model=tier, max_tokens=200, messages=[{"role": "user", "content": PROMPT}]
        ) as stream:
            async for event in stream:
                events.append(event)
            message = await stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds.count("message_start") == 1 and kinds.count("message_stop") == 1
    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == STORY
    starts = [e.index for e in events if e.type == "content_block_start"]
    assert starts == sorted(starts) == list(range(len(starts)))
    assert message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["text"] * len(message.content)
    assert "".join(b.text for b in message.content if b.type == "text") == STORY
    assert message.usage.output_tokens > 5


@pytest.mark.parametrize("tier", ["fast", "claude"])
async def test_a_responses_stream_is_one_response(gateway: GatewayServer, tier: str) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        stream = await client.responses.create(model=tier, input=PROMPT, stream=True)
        events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds.count("response.created") == 1 and kinds.count("response.completed") == 1
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == STORY
    completed = next(e for e in events if e.type == "response.completed")
    assert completed.response.output_text == STORY
    assert completed.response.usage is not None and completed.response.usage.output_tokens > 5


async def test_a_completions_stream_is_one_text_completion(gateway: GatewayServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        stream = await client.completions.create(
            model="fast", prompt=PROMPT, max_tokens=200, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == STORY
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["stop"]
