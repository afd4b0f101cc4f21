"""Streams that survive for every ingress API (issue 14 item 3): the continuation is spliced
below the translators, so a Messages client (the anthropic SDK) sees one Anthropic event
sequence (one message_start, block indexes continuing, one message_stop), a Responses client
one response.created ... one response.completed with continuous sequence numbers, and a
legacy Completions client one text_completion stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gateway.metrics import STREAM_RECOVERIES
from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.midstream import STORY, words
from tests.fakes.openai_upstream import FakeOpenAI
from tests.test_midstream import gateway as gateway  # the same gateway, as a fixture
from tests.test_midstream import midstream_config, records

PROMPT = "Tell the story. fault:mid_reset fake:mid_reset"


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
    assert_one_message(events)
    text = streamed_text(events)
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


NATIVE_REASONS = {
    "mid_reset": "reset",
    "mid_stall": "stall",
    "mid_error": "5xx",  # overloaded_error
    "mid_no_finish": "bad_response",  # the body ended without message_stop
}


def streamed_text(events: list[Any]) -> str:
    """The text an Anthropic event sequence's text deltas spell."""
    return "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )


def assert_one_message(events: list[Any]) -> None:
    """One Anthropic event sequence: one message_start and message_stop, blocks numbered
    0, 1, ... and every delta and stop naming the block that is open."""
    kinds = [e.type for e in events]
    assert kinds.count("message_start") == 1 and kinds.count("message_stop") == 1
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("message_delta") == 1
    open_block: int | None = None
    started: list[int] = []
    for event in events:
        if event.type == "content_block_start":
            assert open_block is None
            open_block = event.index
            started.append(event.index)
        elif event.type == "content_block_delta":
            assert event.index == open_block
        elif event.type == "content_block_stop":
            assert event.index == open_block
            open_block = None
    assert open_block is None
    assert started == list(range(len(started)))


@pytest.mark.parametrize("fault", list(NATIVE_REASONS))
@pytest.mark.parametrize("tier", ["claude", "claudes"])
async def test_a_native_messages_stream_continues_as_one_message(
    gateway: GatewayServer, claude_upstream: FakeAnthropic, tier: str, fault: str
) -> None:
    """/v1/messages to an Anthropic upstream is relayed as the upstream's own events; when it
    breaks in the middle of its text, the next model (OpenAI-compatible, or Anthropic again
    by prefill) writes the rest into the same message."""
    chain = gateway.config.tiers[tier]
    recoveries = STREAM_RECOVERIES.labels(tier, chain[0], chain[1], NATIVE_REASONS[fault])
    before = recoveries.value
    async with (
        anthropic.AsyncAnthropic(
            base_url=gateway.url, api_key=APP_KEY, max_retries=0, timeout=20
        ) as client,
        client.messages.stream(
            model=tier,
            max_tokens=200,
            messages=[{"role": "user", "content": f"Tell the story. fake:{fault}"}],
        ) as stream,
    ):
        events = [event async for event in stream]
        message = await stream.get_final_message()
    assert_one_message(events)
    text = streamed_text(events)
    assert text == STORY
    assert "".join(b.text for b in message.content if b.type == "text") == STORY
    assert message.stop_reason == "end_turn"
    assert recoveries.value == before + 1
    # The first model's message_start went to the client as the upstream wrote it.
    assert message.id.startswith("msg_fake")
    [record] = await records(gateway)
    assert record["recovered"] is True and record["api"] == "messages"
    assert record["recovered_from"] == [f"{chain[0]}: {NATIVE_REASONS[fault]}"]
    assert record["model"] == chain[1] and record["attempts"] == 2
    # Both models' tokens: the first's input (its own count, 12) and its 30 characters
    # (estimated, 8 tokens), plus the second's as it reported them (the OpenAI fake: 11 in,
    # a token a word; the Anthropic fake: 12 in, 7 out).
    second = (11, len(words(STORY[30:]))) if tier == "claude" else (12, 7)
    assert record["prompt_tokens"] == 12 + second[0]
    assert record["completion_tokens"] == 8 + second[1] == message.usage.output_tokens
    if tier == "claudes":
        # Asked by prefill: the story so far as the last, assistant, turn.
        last = claude_upstream.requests[-1].body["messages"][-1]
        assert last["role"] == "assistant"


async def test_a_native_tool_use_that_breaks_stays_an_in_band_error(
    gateway: GatewayServer, claude_upstream: FakeAnthropic
) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        with pytest.raises(anthropic.APIError):
            async with client.messages.stream(
                model="claude",
                max_tokens=200,
                messages=[{"role": "user", "content": "Look it up. fake:mid_reset_tool"}],
            ) as stream:
                async for _ in stream:
                    pass
    assert len(claude_upstream.requests) == 1  # nothing was continued
    [record] = await records(gateway)
    assert record["recovered"] is False and record["cut"] is True


async def test_native_messages_with_midstream_off_keeps_the_in_band_error(
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    start_gateway: StartGateway,
    tmp_path: Path,
) -> None:
    raw = midstream_config(upstream.url, claude_upstream.url, tmp_path / "u.jsonl", "off")
    gateway = await start_gateway(raw)
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        text = ""
        with pytest.raises(anthropic.APIError):
            async with client.messages.stream(
                model="claude",
                max_tokens=200,
                messages=[{"role": "user", "content": "Tell the story. fake:mid_error"}],
            ) as stream:
                async for event in stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        text += event.delta.text
    assert text and STORY.startswith(text) and text != STORY
    assert len(claude_upstream.requests) == 1


@pytest.mark.parametrize("fault", list(NATIVE_REASONS))
async def test_a_native_responses_stream_continues_as_one_response(
    gateway: GatewayServer, upstream: FakeOpenAI, fault: str
) -> None:
    """/v1/responses to an upstream that speaks it (`responses: true`) is relayed as its own
    events; broken in the middle of its text, it goes on with the next model in the same
    response: its id, its message item, sequence numbers without a gap, one completed."""
    reason = "5xx" if fault == "mid_error" else NATIVE_REASONS[fault]
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        stream = await client.responses.create(
            model="native", input=f"Tell the story. fault:{fault}", stream=True
        )
        events = [event async for event in stream]
        kinds = [e.type for e in events]
        assert kinds.count("response.created") == 1 and kinds.count("response.completed") == 1
        assert kinds[-1] == "response.completed"
        numbers = [e.sequence_number for e in events]
        assert numbers == list(range(len(numbers)))
        deltas = [e for e in events if e.type == "response.output_text.delta"]
        assert "".join(e.delta for e in deltas) == STORY
        assert len({(e.item_id, e.output_index, e.content_index) for e in deltas}) == 1
        for name in ("response.output_item.added", "response.content_part.added"):
            assert kinds.count(name) == 1, name
        created = next(e for e in events if e.type == "response.created").response
        completed = next(e for e in events if e.type == "response.completed").response
        assert completed.id == created.id and completed.created_at == created.created_at
        assert completed.output_text == STORY
        assert [item.id for item in completed.output] == [deltas[0].item_id]
        # The gateway keeps the whole response (the upstream's copy is the broken one).
        kept = await client.responses.retrieve(completed.id)
        assert kept.output_text == STORY
        # and a next turn on the native model gets the whole answer replayed, not a
        # previous_response_id naming the upstream's broken copy.
        await client.responses.create(
            model="native", input="And then?", previous_response_id=completed.id
        )
        sent = upstream.requests[-1].body
        assert "previous_response_id" not in sent
        assert STORY in json.dumps(sent["input"])
    assert [r.path for r in upstream.requests[:2]] == ["/v1/responses", "/v1/chat/completions"]
    [record] = [r for r in await records(gateway) if r["api"] == "responses" and r["stream"]]
    assert record["recovered"] is True
    assert record["recovered_from"] == [f"gpt-n: {reason}"]
    assert record["model"] == "gpt-b"
    usage = completed.usage
    assert usage is not None
    # The native part (2 words, 9 characters: 3 tokens estimated) and the continuation's.
    assert usage.output_tokens == record["completion_tokens"] == 3 + len(words(STORY[9:]))


async def test_a_native_responses_function_call_that_breaks_stays_an_in_band_error(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        stream = await client.responses.create(
            model="native", input="Look it up. fault:mid_reset_tool", stream=True
        )
        kinds = [event.type async for event in stream]
    assert kinds[-1] == "error" and "response.completed" not in kinds
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("fault", ["mid_reset", "mid_error", "mid_stall"])
async def test_a_native_completions_stream_continues_as_one_text_completion(
    gateway: GatewayServer, upstream: FakeOpenAI, fault: str
) -> None:
    """Legacy Completions relayed natively (`completions: true`) go on with the next model
    through chat: the native chunks' id, created and model throughout, one finish_reason, one
    usage chunk with both models' tokens."""
    prompt_text = f"Tell the story. fault:{fault}"
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        stream = await client.completions.create(
            model="native",
            prompt=prompt_text,
            max_tokens=200,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == STORY
    assert {(c.id, c.created, c.model) for c in chunks} == {("cmpl-fake", 1700000000, "model-n")}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["stop"]
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1
    assert [r.path for r in upstream.requests] == ["/v1/completions", "/v1/chat/completions"]
    assert upstream.requests[1].body["messages"][0]["content"] == prompt_text
    [record] = await records(gateway)
    assert record["recovered"] is True and record["recovered_from"][0].startswith("gpt-n: ")
    # The native part (six words, estimated at 4 characters a token) and the continuation's.
    native = "".join(words(STORY)[:6])
    assert usages[0].completion_tokens == record["completion_tokens"]
    assert record["completion_tokens"] == -(-len(native) // 4) + len(words(STORY[len(native) :]))


async def test_a_native_completions_stream_of_two_prompts_is_not_continued(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    """Two prompts are two texts: a break stays the in-band error it was."""
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        stream = await client.completions.create(
            model="native", prompt=[PROMPT, PROMPT], max_tokens=200, stream=True
        )
        text = ""
        with pytest.raises(openai.APIError):
            async for chunk in stream:
                text += chunk.choices[0].text if chunk.choices else ""
    assert text and STORY.startswith(text) and text != STORY
    assert [r.path for r in upstream.requests] == ["/v1/completions"]
