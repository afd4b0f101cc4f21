"""The exact response cache through a real gateway (memory backend) with the real openai and
anthropic clients: a miss then a hit with one upstream call, a stream replayed event by event,
tenants kept apart, each control header, concurrent misses collapsed into one call, what is
never stored, and the hit's usage record."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

OTHER_KEY = "gw-test-cache-other"
MESSAGES: Any = [{"role": "user", "content": "What is a cache?"}]
PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens


def cache_config(upstream_url: str, usage_path: Path | None = None, **cache: Any) -> dict[str, Any]:
    raw = base_config(upstream_url)
    raw["cache"] = {"backend": "memory", "ttl_s": 60, **cache}
    raw["models"]["gpt-up"]["price"] = PRICE
    raw["models"]["embed-up"]["price"] = PRICE
    raw["keys"].append({"name": "other", "key": OTHER_KEY, "plan": "pro"})
    if usage_path is not None:
        raw["usage"] = {"sinks": {"jsonl": str(usage_path)}}
    return raw


def sdk(server: GatewayServer, key: str = APP_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=20)


def chat_calls(upstream: FakeOpenAI) -> int:
    return sum(1 for r in upstream.requests if r.path == "/v1/chat/completions")


async def ask(
    client: openai.AsyncOpenAI, headers: dict[str, str] | None = None, **extra: Any
) -> tuple[str, str | None]:
    """The answer's text and its x-gateway-cache header."""
    raw = await client.chat.completions.with_raw_response.create(
        model="fast", messages=MESSAGES, extra_headers=headers, **extra
    )
    answer = raw.parse()
    return answer.choices[0].message.content or "", raw.headers.get("x-gateway-cache")


async def test_a_miss_then_a_hit_calls_the_upstream_once(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> None:
    usage_path = tmp_path / "usage.jsonl"
    server = await start_gateway(cache_config(upstream.url, usage_path))
    upstream.next(Behaviour(words=["first", " answer"]), Behaviour(words=["second"]))
    async with sdk(server) as client:
        first = await client.chat.completions.with_raw_response.create(
            model="fast", messages=MESSAGES
        )
        second = await client.chat.completions.with_raw_response.create(
            model="fast", messages=MESSAGES
        )
    assert chat_calls(upstream) == 1
    assert first.headers["x-gateway-cache"] == "miss"
    assert second.headers["x-gateway-cache"] == "hit"
    assert second.headers["x-gateway-model"] == "gpt-up"
    assert await second.http_response.aread() == await first.http_response.aread()
    assert second.parse().choices[0].message.content == "first answer"
    await server.stop()
    miss, hit = [json.loads(line) for line in usage_path.read_text().splitlines()]
    assert miss["cache"] == "miss" and miss["cost_usd"] > 0 and miss["saved_usd"] == 0
    assert hit["cache"] == "hit" and hit["status"] == 200 and hit["model"] == "gpt-up"
    assert hit["cost_usd"] == 0 and hit["prompt_tokens"] == hit["completion_tokens"] == 0
    assert hit["saved_usd"] == pytest.approx(miss["cost_usd"])
    assert hit["attempts"] == 0


async def test_a_streamed_hit_replays_the_same_events_in_order(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(cache_config(upstream.url))
    words = ["one", " two", " three", " four"]
    upstream.next(Behaviour(words=words, pace_s=0.01), Behaviour(words=["other"]))
    body = {
        "model": "fast",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    raws: list[bytes] = []
    async with aiohttp.ClientSession() as http:
        for expected in ("miss", "hit"):
            async with http.post(
                server.url + "/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {APP_KEY}"},
            ) as response:
                assert response.headers["x-gateway-cache"] == expected
                assert response.headers["Content-Type"] == "text/event-stream"
                raws.append(await response.read())
    assert raws[0] == raws[1] and raws[0].endswith(b"data: [DONE]\n\n")
    async with sdk(server) as client:
        stream = await client.chat.completions.create(
            model="fast", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert chat_calls(upstream) == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(words)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(words)
    # A whole answer is another entry: the stream's events are not its shape.
    text, cache = await ask(sdk(server))
    assert (text, cache) == ("other", "miss")


async def test_each_key_hits_only_its_own_entries_under_scope_key(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(cache_config(upstream.url))
    upstream.next(Behaviour(words=["app's"]), Behaviour(words=["other's"]))
    assert await ask(sdk(server)) == ("app's", "miss")
    assert await ask(sdk(server, OTHER_KEY)) == ("other's", "miss")
    assert await ask(sdk(server)) == ("app's", "hit")
    assert await ask(sdk(server, OTHER_KEY)) == ("other's", "hit")
    assert chat_calls(upstream) == 2


async def test_scope_global_shares_entries_between_keys(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(cache_config(upstream.url, scope="global"))
    upstream.next(Behaviour(words=["shared"]))
    assert await ask(sdk(server)) == ("shared", "miss")
    assert await ask(sdk(server, OTHER_KEY)) == ("shared", "hit")
    assert chat_calls(upstream) == 1


async def test_the_request_context_is_not_part_of_the_key(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(cache_config(upstream.url))
    upstream.next(Behaviour(words=["same"]), Behaviour(words=["different"]))
    assert await ask(sdk(server), {"X-Gateway-Feature": "a"}) == ("same", "miss")
    assert await ask(sdk(server), {"X-Gateway-Feature": "b", "X-Gateway-User": "u"}) == (
        "same",
        "hit",
    )
    # ... but the body is: one more field, another entry.
    assert await ask(sdk(server), temperature=0.5) == ("different", "miss")


async def test_control_headers_no_cache_no_store_and_a_shorter_ttl(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(cache_config(upstream.url))
    upstream.next(*(Behaviour(words=[f"answer {i}"]) for i in range(5)))
    client = sdk(server)
    assert await ask(client) == ("answer 0", "miss")
    # no-cache: not looked up (the upstream answers), and what it gets is stored.
    assert await ask(client, {"Cache-Control": "no-cache"}) == ("answer 1", "bypass")
    assert await ask(client) == ("answer 1", "hit")
    # no-store: looked up, but its own answer is not kept.
    no_store = {"Cache-Control": "no-store"}
    assert await ask(client, no_store, max_tokens=5) == ("answer 2", "miss")
    assert await ask(client, max_tokens=5) == ("answer 3", "miss")
    # x-gateway-cache-ttl: a shorter lifetime for what this request stores.
    short = {"x-gateway-cache-ttl": "0.3"}
    assert await ask(client, short, max_tokens=6) == ("answer 4", "miss")
    assert await ask(client, max_tokens=6) == ("answer 4", "hit")
    await asyncio.sleep(0.4)
    upstream.next(Behaviour(words=["later"]))
    assert await ask(client, max_tokens=6) == ("later", "miss")
    with pytest.raises(openai.BadRequestError) as bad:
        await ask(client, {"x-gateway-cache-ttl": "soon"})
    assert "x-gateway-cache-ttl" in bad.value.message


async def test_twenty_concurrent_identical_misses_make_one_upstream_call(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(cache_config(upstream.url))
    upstream.next(Behaviour(words=["once"], delay_s=0.3))
    async with sdk(server) as client:
        answers = await asyncio.gather(*(ask(client) for _ in range(20)))
    assert chat_calls(upstream) == 1
    assert {text for text, _ in answers} == {"once"}
    assert sorted(str(cache) for _, cache in answers) == ["hit"] * 19 + ["miss"]


async def test_waiters_go_upstream_when_the_first_call_fails(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(cache_config(upstream.url))
    upstream.next(Behaviour(status=500, delay_s=0.2), Behaviour(words=["retried"], delay_s=0.1))
    async with sdk(server) as client:
        results = await asyncio.gather(*(ask(client) for _ in range(5)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], openai.InternalServerError)
    # One waiter led the next call; the other three got its answer.
    assert chat_calls(upstream) == 2
    assert sorted(str(r[1]) for r in results if isinstance(r, tuple)) == ["hit"] * 3 + ["miss"]


async def test_failed_cut_and_errored_answers_are_never_stored(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(cache_config(upstream.url))
    client = sdk(server)
    upstream.next(Behaviour(status=500))
    with pytest.raises(openai.InternalServerError):
        await ask(client)
    for fault in ("reset_mid_stream", "error_event", "no_done"):
        messages: Any = [{"role": "user", "content": f"fault:{fault}"}]
        for _ in range(2):
            with pytest.raises(openai.APIError):
                stream = await client.chat.completions.create(
                    model="fast", messages=messages, stream=True
                )
                async for _chunk in stream:
                    pass
    assert chat_calls(upstream) == 7
    upstream.next(Behaviour(words=["fine"]))
    assert await ask(client) == ("fine", "miss")


async def test_tool_calls_and_embeddings_are_cached(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(cache_config(upstream.url))
    call = {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
    upstream.next(Behaviour(words=[], tool_calls=[call]))
    async with sdk(server) as client:
        for _ in range(2):
            answer = await client.chat.completions.create(model="fast", messages=MESSAGES)
            calls = answer.choices[0].message.tool_calls
            assert calls is not None and calls[0].id == "call_1"
        vectors = [
            await client.embeddings.with_raw_response.create(model="embed", input=["a", "b"])
            for _ in range(2)
        ]
    assert chat_calls(upstream) == 1
    assert sum(1 for r in upstream.requests if r.path == "/v1/embeddings") == 1
    assert [v.headers["x-gateway-cache"] for v in vectors] == ["miss", "hit"]
    assert vectors[0].parse().data[1].embedding == vectors[1].parse().data[1].embedding


async def test_messages_and_completions_hits(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(cache_config(upstream.url))
    async with anthropic.AsyncAnthropic(
        base_url=server.url, api_key=APP_KEY, max_retries=0
    ) as claude:
        texts = []
        for expected in ("miss", "hit"):
            raw = await claude.messages.with_raw_response.create(
                model="fast", max_tokens=50, messages=MESSAGES
            )
            assert raw.headers["x-gateway-cache"] == expected
            block = (await raw.parse()).content[0]
            assert block.type == "text"
            texts.append(block.text)
        assert texts[0] == texts[1]
        async with claude.messages.stream(model="fast", max_tokens=50, messages=MESSAGES) as stream:
            streamed = await stream.get_final_text()
        async with claude.messages.stream(model="fast", max_tokens=50, messages=MESSAGES) as stream:
            assert await stream.get_final_text() == streamed
    async with sdk(server) as client:
        completions = [
            await client.completions.with_raw_response.create(model="fast", prompt="Say hi")
            for _ in range(2)
        ]
    assert [c.headers["x-gateway-cache"] for c in completions] == ["miss", "hit"]
    assert completions[0].parse().choices[0].text == completions[1].parse().choices[0].text
    assert chat_calls(upstream) == 3  # messages, messages stream, completions: once each


async def test_a_stored_responses_answer_is_not_cached_but_store_false_is(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(cache_config(upstream.url))
    async with sdk(server) as client:
        stored = [
            await client.responses.with_raw_response.create(model="fast", input="Hi")
            for _ in range(2)
        ]
        unstored = [
            await client.responses.with_raw_response.create(model="fast", input="Hi", store=False)
            for _ in range(2)
        ]
    assert [r.headers["x-gateway-cache"] for r in stored] == ["bypass", "bypass"]
    assert stored[0].parse().id != stored[1].parse().id  # each stored response its own id
    assert [r.headers["x-gateway-cache"] for r in unstored] == ["miss", "hit"]
    assert chat_calls(upstream) == 3


async def test_hits_count_toward_rpm_but_not_tpm_or_budgets(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = cache_config(upstream.url)
    # tpm fits one request's estimate; the budget one request's worst case.
    raw["plans"]["pro"] |= {"rpm": 4, "tpm": 1200, "budget": {"usd": 0.0025, "period": "day"}}
    server = await start_gateway(raw)
    client = sdk(server)
    assert (await ask(client, max_tokens=1000))[1] == "miss"
    for _ in range(3):  # tpm and the budget would refuse a second upstream call by now
        assert (await ask(client, max_tokens=1000))[1] == "hit"
    with pytest.raises(openai.RateLimitError) as refused:
        await ask(client, max_tokens=1000)
    assert "requests" in refused.value.message.lower()
    assert chat_calls(upstream) == 1


async def cache_counts(server: GatewayServer) -> dict[str, float]:
    """gateway_cache_requests_total{api="chat"} by result, from /metrics."""
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as response:
        text = await response.text()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('gateway_cache_requests_total{api="chat",result="'):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('result="')[1].split('"')[0]] = float(value)
    return counts


async def test_usage_summary_and_metrics_show_hits_and_money_saved(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(cache_config(upstream.url))
    before = await cache_counts(server)
    for _ in range(3):
        await ask(sdk(server))
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            server.url + "/v1/usage",
            params={"group_by": "model"},
            headers={"Authorization": f"Bearer {APP_KEY}"},
        ) as response,
    ):
        row = (await response.json())["data"][0]
    assert row["requests"] == 3 and row["cache_hits"] == 2
    assert row["saved_usd"] == pytest.approx(2 * row["cost_usd"])
    after = await cache_counts(server)
    assert after["hit"] - before.get("hit", 0) == 2
    assert after["miss"] - before.get("miss", 0) == 1


async def cache_gauges(server: GatewayServer) -> tuple[float, float]:
    """gateway_cache_memory_bytes and gateway_cache_memory_entries, from /metrics."""
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as response:
        text = await response.text()
    values = dict(
        line.split(" ", 1) for line in text.splitlines() if line.startswith("gateway_cache_memory_")
    )
    return float(values["gateway_cache_memory_bytes"]), float(
        values["gateway_cache_memory_entries"]
    )


async def test_unique_requests_evict_the_oldest_and_metrics_show_the_bound_held(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    max_mb = 0.01  # 10485 bytes: about a dozen of these answers
    server = await start_gateway(cache_config(upstream.url, max_mb=max_mb))
    bound = int(max_mb * 1024 * 1024)
    async with sdk(server) as client:

        async def question(n: int) -> str | None:
            raw = await client.chat.completions.with_raw_response.create(
                model="fast", messages=[{"role": "user", "content": f"question {n}"}]
            )
            return raw.headers.get("x-gateway-cache")

        assert [await question(n) for n in range(40)] == ["miss"] * 40
        held, entries = await cache_gauges(server)
        assert 0 < held <= bound
        assert 5 <= entries < 40
        assert await question(39) == "hit"  # the newest is still there
        assert await question(0) == "miss"  # the oldest was evicted
    assert chat_calls(upstream) == 41
    assert (await cache_gauges(server))[0] <= bound


async def test_without_a_cache_section_there_is_no_cache_header(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(base_config(upstream.url))
    assert (await ask(sdk(server)))[1] is None
    assert (await ask(sdk(server)))[1] is None
    assert chat_calls(upstream) == 2
