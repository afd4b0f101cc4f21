"""Streams that survive (issue 14): a text stream that fails after its first event (a reset, a
stall, an error event, a clean end without a finish reason) goes on with the next model, and
the client, through the real openai SDK, sees one stream: the first chunk's id, created and
model throughout, no text repeated or lost at the seam, one finish_reason, one usage chunk
with every model's tokens. The fakes fail the known story (tests/fakes/midstream.py) after a
few words and answer a continuation request with exactly the rest of it, so the assembled text
is asserted whole. OpenAI-compatible and Anthropic upstreams, each way round."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.metrics import STREAM_RECOVERIES, UPSTREAM_ERRORS
from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.midstream import STORY, continuation_of, words
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

IDLE_S = 0.3
FAULTS = ("mid_reset", "mid_stall", "mid_error", "mid_no_finish")
REASONS = {"mid_reset": "reset", "mid_stall": "stall", "mid_error": "5xx"}
REASONS["mid_no_finish"] = "bad_response"  # an Anthropic stream's: "reset" (no message_stop)
SENT = "Once upon a time, a"  # what the OpenAI fake's faults write before they fail


def midstream_config(
    openai_url: str, anthropic_url: str, usage_path: Path, midstream: str = "continue"
) -> dict[str, Any]:
    timeout = {"connect": 2, "first_token": 5, "total": 30, "idle": IDLE_S}
    limits = {"max_concurrent": 10}
    return {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {
            "up": {"type": "openai", "base_url": openai_url},
            "claude": {"type": "anthropic", "base_url": anthropic_url},
            # The same fake, taking Responses and legacy Completions bodies as sent.
            "native": {
                "type": "openai",
                "base_url": openai_url,
                "responses": True,
                "completions": True,
            },
        },
        "models": {
            "gpt-a": {
                "provider": "up",
                "model": "model-a",
                "timeout": timeout,
                "limits": limits,
                "price": {"input": 1.0, "output": 2.0},
            },
            "gpt-b": {
                "provider": "up",
                "model": "model-b",
                "timeout": timeout,
                "limits": limits,
                "price": {"input": 10.0, "output": 20.0},
            },
            "claude-a": {"provider": "claude", "model": "claude-a", "timeout": timeout},
            "claude-b": {"provider": "claude", "model": "claude-b", "timeout": timeout},
            "gpt-n": {"provider": "native", "model": "model-n", "timeout": timeout},
        },
        "tiers": {
            "fast": ["gpt-a", "gpt-b"],  # OpenAI-compatible, continued on OpenAI-compatible
            "mixed": ["gpt-a", "claude-a"],  # continued on Anthropic, by prefill
            "claude": ["claude-a", "gpt-b"],  # Anthropic, continued on OpenAI-compatible
            "solo": ["gpt-a"],  # the same model again
            "claudes": ["claude-a", "claude-b"],  # Anthropic, continued on Anthropic
            "native": ["gpt-n", "gpt-b"],  # Responses / Completions relayed natively
        },
        "routing": {"retries": 0, "midstream": midstream},
        "plans": {"pro": {"max_concurrent": 10}},
        "keys": [{"name": "app", "key": APP_KEY, "plan": "pro", "feature": "chat-api"}],
        "usage": {"sinks": {"jsonl": str(usage_path)}},
    }


@pytest.fixture
async def gateway(
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    start_gateway: StartGateway,
    tmp_path: Path,
) -> GatewayServer:
    raw = midstream_config(upstream.url, claude_upstream.url, tmp_path / "usage.jsonl")
    return await start_gateway(raw)


@pytest.fixture
async def client(gateway: GatewayServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as sdk:
        yield sdk


def prompt(fault: str) -> list[ChatCompletionMessageParam]:
    # `fault:` picks the OpenAI fake's failure, `fake:` the Anthropic fake's.
    return [{"role": "user", "content": f"Tell the story. fault:{fault} fake:{fault}"}]


async def chat_chunks(
    client: openai.AsyncOpenAI, tier: str, fault: str, **extra: Any
) -> list[tuple[float, Any]]:
    stream = await client.chat.completions.create(
        model=tier, messages=prompt(fault), stream=True, **extra
    )
    return [(time.perf_counter(), chunk) async for chunk in stream]


def text_of(chunks: list[tuple[float, Any]]) -> str:
    return "".join(c.choices[0].delta.content or "" for _, c in chunks if c.choices)


async def records(gateway: GatewayServer) -> list[dict[str, Any]]:
    path = Path(gateway.config.usage.sinks.jsonl or "")
    await gateway.stop()
    text = await asyncio.to_thread(path.read_text)
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("tier", ["fast", "mixed", "claude"])
async def test_a_failed_text_stream_continues_seamlessly_on_the_next_model(
    client: openai.AsyncOpenAI, gateway: GatewayServer, tier: str, fault: str
) -> None:
    chain = gateway.config.tiers[tier]
    reason = "reset" if (tier, fault) == ("claude", "mid_no_finish") else REASONS[fault]
    recoveries = STREAM_RECOVERIES.labels(tier, chain[0], chain[1], reason)
    before = recoveries.value
    chunks = await chat_chunks(client, tier, fault, stream_options={"include_usage": True})
    assert text_of(chunks) == STORY  # the first model's part plus the rest, no seam showing
    first = chunks[0][1]
    assert {(c.id, c.created, c.model) for _, c in chunks} == {
        (first.id, first.created, first.model)
    }
    finishes = [c.choices[0].finish_reason for _, c in chunks if c.choices]
    assert [f for f in finishes if f] == ["stop"]
    roles = [c.choices[0].delta.role for _, c in chunks if c.choices and c.choices[0].delta.role]
    assert roles == ["assistant"]
    usage_chunks = [c for _, c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1 and not usage_chunks[0].choices
    assert recoveries.value == before + 1
    [record] = await records(gateway)
    assert record["recovered"] is True
    assert record["recovered_from"] == [f"{chain[0]}: {reason}"]
    assert record["model"] == chain[1] and record["attempts"] == 2 and record["status"] == 200
    usage = usage_chunks[0].usage
    # Both models' tokens: the failed part (estimated) and the continuation (reported).
    assert record["completion_tokens"] == usage.completion_tokens
    assert record["prompt_tokens"] == usage.prompt_tokens
    assert usage.prompt_tokens > 12  # the continuation's own prompt count is more than that


async def test_the_cost_is_each_models_tokens_at_its_own_price(
    client: openai.AsyncOpenAI, gateway: GatewayServer
) -> None:
    chunks = await chat_chunks(client, "fast", "mid_reset", stream_options={"include_usage": True})
    usage = next(c.usage for _, c in chunks if c.usage is not None)
    [record] = await records(gateway)
    # gpt-a wrote the first five words (estimated at 4 characters a token) and failed;
    # gpt-b (10x the price) reported its own 11 prompt tokens and one token a word.
    first_completion = -(-len(SENT) // 4)
    rest = len(words(STORY[len(SENT) :]))
    first_prompt = usage.prompt_tokens - 11
    assert usage.completion_tokens == first_completion + rest
    expected = (first_prompt * 1 + first_completion * 2 + 11 * 10 + rest * 20) / 1e6
    assert record["cost_usd"] == pytest.approx(expected)
    assert record["estimated"] is True  # the failed part's tokens are


async def test_a_continuation_that_repeats_the_end_is_trimmed_at_the_seam(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    chunks = await chat_chunks(client, "fast", "mid_reset_overlap")
    assert text_of(chunks) == STORY
    # The fake did repeat the end of the first part: the gateway took it out.
    assert upstream.requests[-1].body["messages"][-2]["role"] == "assistant"


async def test_the_same_model_continues_when_it_was_the_last_of_the_chain(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    chunks = await chat_chunks(client, "solo", "mid_stall")
    assert text_of(chunks) == STORY
    assert [r.body["model"] for r in upstream.requests] == ["model-a", "model-a"]


async def test_the_same_model_is_asked_again_only_after_the_usual_backoff(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    """Continuing on the model that just failed waits a retry's backoff first (uniformly
    random up to 0.2 s here): over six continuations, some gap between the reset (10 ms after
    the first stream's last event) and the continuation request is longer than 40 ms, which
    without a backoff none is (about 12 ms). Chance of a false failure: 0.15 ** 6."""
    gaps = []
    for _ in range(6):
        upstream.requests.clear()
        upstream.event_times.clear()
        assert text_of(await chat_chunks(client, "solo", "mid_reset")) == STORY
        first_ended = upstream.event_times[len(SENT.split())]  # the role chunk, five words
        gaps.append(upstream.requests[1].at - first_ended)
    assert min(gaps) > 0 and max(gaps) > 0.04, gaps


async def test_the_continuation_streams_progressively(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    """The continuation's words come 10 ms apart upstream: they reach the client spread out
    in time, not collected at the seam and sent at once."""
    chunks = await chat_chunks(client, "fast", "mid_reset")
    after_seam = [t for t, c in chunks if c.choices and c.choices[0].delta.content]
    after_seam = after_seam[len(SENT.split()) :]
    assert len(after_seam) >= 15
    assert after_seam[-1] - after_seam[0] > 0.1
    assert len({round(t, 3) for t in after_seam}) >= 10


async def test_a_client_that_leaves_during_the_continuation_cancels_it(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    body = {
        "model": "fast",
        "stream": True,
        "messages": [{"role": "user", "content": "fault:mid_reset slow_continuation"}],
    }
    async with aiohttp.ClientSession() as http:
        answer = await http.post(
            gateway.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {APP_KEY}"},
        )
        seen = b""
        async with asyncio.timeout(5):
            # The role chunk, the first model's five words, then two of the continuation's.
            while seen.count(b'"content"') < 8:
                seen += await answer.content.readuntil(b"\n\n")
        # In the middle of the continuation the request still holds its key's slot (taken
        # once, at admission) and the continuing model's.
        limiter = gateway.process.limiter
        held = {s: await limiter.in_flight(s) for s in ("key:app", "model:gpt-a", "model:gpt-b")}
        assert held == {"key:app": 1, "model:gpt-a": 0, "model:gpt-b": 1}
        left = time.perf_counter()
        answer.close()
    # The continuation (its words 0.2 s apart, 4 s in all) was cancelled upstream as the
    # client left: the fake saw the gateway go, once, at once. (The first stream was reset by
    # the fake itself, which it does not count as the gateway going away.)
    gone = await upstream.wait_disconnect(within=2)
    assert gone is not None
    # At once: well before the stream's own idle timer (0.3 s) would have closed it.
    assert all(0 <= t - left < 0.2 for t in upstream.disconnects)
    assert len(upstream.requests) == 2 and continuation_of(upstream.requests[1].body) is not None
    process = gateway.process
    for _ in range(150):  # settling follows the client's leaving by a moment
        if not process.in_flight:
            break
        await asyncio.sleep(0.02)
    assert process.in_flight == 0
    for subject in ("key:app", "model:gpt-a", "model:gpt-b"):
        assert await process.limiter.in_flight(subject) == 0, subject


async def test_limits_are_held_across_the_seam_and_given_back_once(
    client: openai.AsyncOpenAI, gateway: GatewayServer
) -> None:
    process = gateway.process
    chunks = await chat_chunks(client, "fast", "mid_error")
    assert text_of(chunks) == STORY
    for subject in ("key:app", "model:gpt-a", "model:gpt-b"):
        assert await process.limiter.in_flight(subject) == 0, subject
    assert process.in_flight == 0


@pytest.mark.parametrize("tier", ["fast", "claude"])
async def test_a_broken_tool_call_stays_an_in_band_error(
    client: openai.AsyncOpenAI,
    gateway: GatewayServer,
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    tier: str,
) -> None:
    stream = await client.chat.completions.create(
        model=tier, messages=prompt("mid_reset_tool"), stream=True
    )
    calls = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            calls += chunk.choices[0].delta.tool_calls or [] if chunk.choices else []
    assert calls  # it broke in the middle of the call, not before it
    # Nothing was continued: one request upstream in all.
    assert len(upstream.requests) + len(claude_upstream.requests) == 1
    [record] = await records(gateway)
    assert record["recovered"] is False and record["cut"] is True


async def test_a_stream_of_several_choices_is_not_continued(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    """Not one text to splice into: `n: 2` breaking mid-stream stays an in-band error."""
    stream = await client.chat.completions.create(
        model="fast", messages=prompt("mid_reset"), stream=True, n=2
    )
    indexes = set()
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            indexes |= {c.index for c in chunk.choices}
    assert indexes == {0, 1}
    assert len(upstream.requests) == 1


async def test_midstream_off_keeps_the_in_band_error_and_counts_the_stall(
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    start_gateway: StartGateway,
    tmp_path: Path,
) -> None:
    raw = midstream_config(upstream.url, claude_upstream.url, tmp_path / "u.jsonl", "off")
    gateway = await start_gateway(raw)
    stalls = UPSTREAM_ERRORS.labels("up", "gpt-a", "stall")
    before = stalls.value
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="fast", messages=prompt("mid_stall"), stream=True
        )
        text = ""
        started = time.perf_counter()
        with pytest.raises(openai.APIError, match="idle timeout"):
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""
        # Cut at `idle` (0.3 s) after the last event, not at `total` (30 s).
        assert time.perf_counter() - started < 3
    assert text == SENT
    assert stalls.value == before + 1
    # The upstream connection was closed: the fake saw the gateway go.
    assert await upstream.wait_disconnect(within=2) is not None
    assert len(upstream.requests) == 1
    [record] = await records(gateway)
    assert record["cut"] is True and record["recovered"] is False


async def test_a_recovered_stream_is_never_cached(
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    start_gateway: StartGateway,
    tmp_path: Path,
) -> None:
    """A stream spliced from two models' answers is not one answer to replay: with a cache
    on, the same request asked again goes upstream again (and the clean one is a hit)."""
    raw = midstream_config(upstream.url, claude_upstream.url, tmp_path / "usage.jsonl")
    raw["cache"] = {"backend": "memory"}
    gateway = await start_gateway(raw)
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as sdk:
        first = text_of(await chat_chunks(sdk, "fast", FAULTS[0]))
        calls = len(upstream.requests)
        again = text_of(await chat_chunks(sdk, "fast", FAULTS[0]))
        assert again == first
        assert len(upstream.requests) > calls  # not answered from the cache
    used = await records(gateway)
    assert [r.get("cache") for r in used] == ["miss", "miss"]
    assert all(r["recovered"] for r in used)


async def raw_events(gateway: GatewayServer, body: dict[str, Any]) -> list[bytes]:
    """The `data:` payloads of a chat stream exactly as the gateway wrote them."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gateway.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {APP_KEY}"},
        ) as answer,
    ):
        raw = await answer.read()
    return [e[len(b"data: ") :] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


@pytest.mark.parametrize("tier", ["fast", "claude"])
async def test_the_spliced_bytes_are_one_stream_with_one_done(
    gateway: GatewayServer, tier: str
) -> None:
    """On the wire, not through an SDK that hides it: one [DONE] at the very end, and the
    continuation's chunks carry the first chunk's id, created and model (the OpenAI fake's
    continuation has an id and a time of its own). Without `include_usage`, the summed usage
    chunk is not sent: the client did not ask for it."""
    body = {"model": tier, "stream": True, "messages": prompt("mid_reset")}
    events = await raw_events(gateway, body)
    assert events.count(b"[DONE]") == 1 and events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {(c["id"], c["created"], c["model"]) for c in chunks} == {
        (chunks[0]["id"], chunks[0]["created"], chunks[0]["model"])
    }
    assert chunks[0]["id"] != "chatcmpl-continued"
    assert not [c for c in chunks if c.get("usage")]
    assert all(c["choices"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == STORY


async def test_a_stall_is_logged_counted_cooled_down_and_its_connection_closed(
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    start_gateway: StartGateway,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With continuation on, the stalled stream is still a failed attempt like any other:
    a log line with reason `stall`, gateway_upstream_errors_total{reason="stall"}, a failure
    toward the model's cooldown (one is enough here), and its upstream connection closed."""
    raw = midstream_config(upstream.url, claude_upstream.url, tmp_path / "u.jsonl")
    raw["routing"]["cooldown"] = {"failures": 1, "seconds": 60}
    gateway = await start_gateway(raw)
    stalls = UPSTREAM_ERRORS.labels("up", "gpt-a", "stall")
    before = stalls.value
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        assert text_of(await chat_chunks(client, "fast", "mid_stall")) == STORY
    assert stalls.value == before + 1
    assert await gateway.process.cooldowns.cooling() == {"gpt-a"}
    assert await upstream.wait_disconnect(within=2) is not None
    failed = [r for r in caplog.records if r.getMessage() == "upstream attempt failed"]
    assert [(r.__dict__["model"], r.__dict__["reason"]) for r in failed] == [("gpt-a", "stall")]


async def test_a_stream_past_its_total_timeout_is_continued_too(
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    start_gateway: StartGateway,
    tmp_path: Path,
) -> None:
    """gpt-a may take 0.5 s in all; its story comes a word every 0.1 s, so its deadline cuts it
    after a few words (no stall: each gap is shorter than `idle`), and gpt-b goes on."""
    raw = midstream_config(upstream.url, claude_upstream.url, tmp_path / "u.jsonl")
    raw["models"]["gpt-a"]["timeout"] = {**raw["models"]["gpt-a"]["timeout"], "total": 0.5}
    gateway = await start_gateway(raw)
    upstream.next(Behaviour(words=words(STORY), pace_s=0.1))
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        assert text_of(await chat_chunks(client, "fast", "none")) == STORY
    [record] = await records(gateway)
    assert record["recovered_from"] == ["gpt-a: timeout"]
