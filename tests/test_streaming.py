"""The SSE relay: event by event, no buffering, keep-alives, disconnects, errors in-band."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config, merged
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

AUTH = {"Authorization": f"Bearer {APP_KEY}"}
STREAM_BODY: dict[str, Any] = {
    "model": "fast",
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


async def read_events(response: aiohttp.ClientResponse) -> list[bytes]:
    """Every SSE event of a response, as the raw lines between blank lines."""
    raw = await response.read()
    return [e for e in raw.replace(b"\r\n", b"\n").split(b"\n\n") if e]


async def test_sse_headers(gateway: GatewayServer) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Cache-Control"] == "no-cache, no-transform"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert response.headers["x-gateway-model"] == "gpt-up"
        assert response.headers["x-request-id"]
        assert response.headers["Server"] != "fake-upstream/1.0"
        assert "Set-Cookie" not in response.headers
        events = await read_events(response)
    assert events[-1] == b"data: [DONE]"
    assert not any(e.startswith((b"id:", b"retry:")) for e in events)


async def test_first_event_arrives_before_the_upstream_sends_the_second(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(pace_s=0.3))
    stream = await client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    received: list[float] = []
    async for _chunk in stream:
        received.append(time.perf_counter())
    # Event 0 is the role chunk; the upstream wrote event 1 only 300 ms later.
    assert received[0] < upstream.event_times[1]
    # And each later event reached the client before the upstream wrote the one after it.
    for i in range(1, 4):
        assert received[i] < upstream.event_times[i + 1]


async def test_upstream_events_are_relayed_as_the_upstreams_own_bytes(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(crlf=True))
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        raw = await response.read()
    assert raw.count(b"\r\n\r\n") == 7  # role, 4 words, finish, [DONE]; usage chunk stripped
    assert raw.endswith(b"data: [DONE]\r\n\r\n")


async def test_client_disconnect_mid_stream_closes_the_upstream_request(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(pace_s=0.5, words=["w"] * 20))
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH
        )
        await response.content.readuntil(b"\n\n")
        left_at = time.perf_counter()
        response.close()
    seen = await upstream.wait_disconnect(within=2)
    assert seen is not None, "the upstream request was not closed"
    assert seen - left_at < 1.0
    assert len(upstream.event_times) < 5


async def test_client_disconnect_before_the_first_token_closes_the_upstream_request(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(first_event_delay_s=10))
    async with aiohttp.ClientSession() as http:
        task = asyncio.create_task(
            http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH)
        )
        await asyncio.sleep(0.3)
        left_at = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    seen = await upstream.wait_disconnect(within=2)
    assert seen is not None, "the upstream request was not closed"
    assert seen - left_at < 1.0


async def test_non_stream_client_disconnect_closes_the_upstream_request(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(delay_s=10))
    body = {**STREAM_BODY, "stream": False}
    async with aiohttp.ClientSession() as http:
        task = asyncio.create_task(
            http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH)
        )
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await upstream.wait_disconnect(within=2) is not None


async def test_keep_alive_comments_while_the_first_token_is_slow(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(merged(base_config(upstream.url), server={"keepalive_s": 0.2}))
    upstream.next(Behaviour(first_event_delay_s=1.0))
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        assert response.status == 200
        events = await read_events(response)
    keepalives = [e for e in events if e == b": keep-alive"]
    assert len(keepalives) >= 3
    first_data = next(i for i, e in enumerate(events) if e.startswith(b"data:"))
    assert all(e == b": keep-alive" for e in events[:first_data])
    assert events[-1] == b"data: [DONE]"


async def test_client_disconnect_during_keep_alives_closes_the_upstream_and_settles(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(merged(base_config(upstream.url), server={"keepalive_s": 0.1}))
    upstream.next(Behaviour(first_event_delay_s=10))
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH
        )
        assert response.status == 200
        assert (await response.content.readuntil(b"\n\n")) == b": keep-alive\n\n"
        left_at = time.perf_counter()
        response.close()
    seen = await upstream.wait_disconnect(within=2)
    assert seen is not None, "the upstream request was not closed"
    assert seen - left_at < 1.0
    process = gateway.process
    for _ in range(100):
        if process.in_flight == 0 and not process.drain._tasks:
            break
        await asyncio.sleep(0.02)
    assert process.in_flight == 0 and not process.drain._tasks


async def test_a_first_event_just_after_the_keep_alive_timer_names_the_model(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    """Keep-alives that never had to be sent do not blank the model headers, whatever the
    timing around the first one."""
    gateway = await start_gateway(merged(base_config(upstream.url), server={"keepalive_s": 0.05}))
    for delay in (0.0, 0.03, 0.045, 0.05, 0.055, 0.08):
        upstream.next(Behaviour(first_event_delay_s=delay))
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH
            ) as response,
        ):
            events = await read_events(response)
        assert events[-1] == b"data: [DONE]"
        if events[0] == b": keep-alive":
            assert response.headers["x-gateway-model"] == ""
        else:
            assert response.headers["x-gateway-model"] == "gpt-up"


async def test_upstreams_own_leading_comments_do_not_count_as_the_first_event(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(status=200, leading_comment=True))
    stream = await client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == (
        "Hello from the upstream"
    )


async def test_upstream_error_before_the_first_event_is_an_error_status(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(status=500))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert caught.value.status_code == 502


async def test_error_event_as_the_first_event_is_an_error_status(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(error_event_after=0))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert "upstream broke mid-stream" in caught.value.message


async def test_upstream_reset_after_the_first_event_is_one_error_event_and_no_done(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(reset_after_events=3))
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        assert response.status == 200
        events = await read_events(response)
    assert len(events) == 4
    assert b"[DONE]" not in b"".join(events)
    error = orjson.loads(events[-1].removeprefix(b"data: "))["error"]
    assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_connection_reset"


async def test_upstream_reset_mid_stream_raises_in_the_sdk(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(reset_after_events=2))
    stream = await client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            seen.append(chunk)
    assert len(seen) == 2


async def test_upstream_error_event_mid_stream_is_relayed_and_ends_the_stream(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(error_event_after=2))
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        events = await read_events(response)
    assert b"upstream broke mid-stream" in events[-1]
    assert b"[DONE]" not in b"".join(events)


async def test_first_token_timeout_is_504_when_nothing_was_sent(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = base_config(upstream.url)
    raw["models"]["gpt-up"]["timeout"] = {"connect": 1, "first_token": 0.5, "total": 30}
    gateway = await start_gateway(raw)
    upstream.next(Behaviour(first_event_delay_s=5))
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        assert response.status == 504
        body = await response.json()
    assert body["error"]["type"] == "upstream_timeout"
    assert time.perf_counter() - started < 2
    assert await upstream.wait_disconnect(within=2) is not None


async def test_first_token_timeout_after_keep_alives_is_an_in_band_error(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = merged(base_config(upstream.url), server={"keepalive_s": 0.1})
    raw["models"]["gpt-up"]["timeout"] = {"connect": 1, "first_token": 0.5, "total": 30}
    gateway = await start_gateway(raw)
    upstream.next(Behaviour(first_event_delay_s=5))
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        assert response.status == 200
        events = await read_events(response)
    assert events[0] == b": keep-alive"
    assert orjson.loads(events[-1].removeprefix(b"data: "))["error"]["type"] == "upstream_timeout"
    assert b"[DONE]" not in b"".join(events)


async def test_a_stream_past_its_total_ends_with_an_in_band_timeout(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = base_config(upstream.url)
    raw["models"]["gpt-up"]["timeout"] = {"connect": 1, "first_token": 0.5, "total": 0.8}
    gateway = await start_gateway(raw)
    upstream.next(Behaviour(pace_s=0.3))  # 7 events: about 1.8 s in all
    started = time.perf_counter()
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        assert response.status == 200
        events = await read_events(response)
    took = time.perf_counter() - started
    assert 0.7 < took < 1.5
    data = [e for e in events if e.startswith(b"data:")]
    assert 2 <= len(data) < 7  # some content came, then the timeout
    error = orjson.loads(data[-1].removeprefix(b"data: "))["error"]
    assert error["type"] == "upstream_timeout"
    assert b"[DONE]" not in b"".join(events)
    assert await upstream.wait_disconnect(within=2) is not None


async def test_a_stream_within_its_total_is_not_cut(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = base_config(upstream.url)
    raw["models"]["gpt-up"]["timeout"] = {"connect": 1, "first_token": 0.5, "total": 3}
    gateway = await start_gateway(raw)
    upstream.next(Behaviour(pace_s=0.2))
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        events = await read_events(response)
    assert events[-1] == b"data: [DONE]"


async def test_usage_chunk_is_kept_when_the_client_asked_and_stripped_otherwise(
    gateway: GatewayServer,
) -> None:
    async with aiohttp.ClientSession() as http:
        for asked in (True, False):
            body = (
                {**STREAM_BODY, "stream_options": {"include_usage": True}}
                if asked
                else (STREAM_BODY)
            )
            async with http.post(
                gateway.url + "/v1/chat/completions", json=body, headers=AUTH
            ) as response:
                events = await read_events(response)
            usage_chunks = [e for e in events if b'"choices":[]' in e]
            assert len(usage_chunks) == (1 if asked else 0)


async def test_many_concurrent_streams_each_get_their_own_events(
    client: openai.AsyncOpenAI,
) -> None:
    async def one(i: int) -> str:
        stream = await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": f"prompt {i}"}], stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    texts = await asyncio.gather(*(one(i) for i in range(40)))
    again = await asyncio.gather(*(one(i) for i in range(40)))
    assert texts == again
    assert len(set(texts)) > 1
