"""Whatever way a request ends, it leaves nothing held: no process slot, no runtime reference,
no in-flight gauge, no key or model concurrency lease.

Each test drives one exit path through a real gateway (a fake OpenAI upstream on 127.0.0.1,
limits in memory with concurrency caps, so every kind of hold is really taken) and then checks
every place a request takes something from.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from gateway.metrics import IN_FLIGHT
from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

AUTH = {"Authorization": f"Bearer {APP_KEY}"}
BODY: dict[str, Any] = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
STREAM_BODY = {**BODY, "stream": True}
SUBJECTS = ("key:app", "model:gpt-up", "model:gpt-up2")


def held_config(upstream_url: str) -> dict[str, Any]:
    """Two models in the tier, each with a concurrency cap, and a key plan with one too."""
    raw = base_config(upstream_url)
    raw["server"].update({"keepalive_s": 0.1, "shutdown_grace_s": 0.3})
    raw["models"]["gpt-up"]["limits"] = {"max_concurrent": 10}
    raw["models"]["gpt-up2"] = {**raw["models"]["gpt-up"], "limits": {"max_concurrent": 10}}
    raw["tiers"]["fast"] = ["gpt-up", "gpt-up2"]
    raw["plans"]["pro"]["max_concurrent"] = 10
    return raw


async def what_is_held(gateway: GatewayServer, gauge_before: float) -> dict[str, float]:
    process = gateway.process
    held: dict[str, float] = {
        "process slots": process.in_flight,
        "runtime references": process.current.active_requests,
        "in-flight gauge": IN_FLIGHT.labels("fast").value - gauge_before,
    }
    for subject in SUBJECTS:
        held[subject] = await process.limiter.in_flight(subject)
    return {name: count for name, count in held.items() if count}


async def assert_nothing_held(gateway: GatewayServer, gauge_before: float) -> None:
    """Settling runs in the middleware's `finally`, just after the client saw the end: wait
    for it briefly, then everything must be back."""
    deadline = time.perf_counter() + 3
    held = await what_is_held(gateway, gauge_before)
    while held and time.perf_counter() < deadline:
        await asyncio.sleep(0.02)
        held = await what_is_held(gateway, gauge_before)
    assert not held, f"still held after the request ended: {held}"


@pytest.fixture
async def held_gateway(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> tuple[GatewayServer, float]:
    gateway = await start_gateway(held_config(upstream.url))
    return gateway, IN_FLIGHT.labels("fast").value


async def test_a_request_in_flight_holds_every_kind_of_thing(
    upstream: FakeOpenAI, held_gateway: tuple[GatewayServer, float]
) -> None:
    """The checks below can fail: while a stream runs, each hold is seen as taken."""
    gateway, gauge = held_gateway
    upstream.next(Behaviour(pace_s=0.3, words=["a", "b", "c", "d"]))
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as answer,
    ):
        await answer.content.readuntil(b"\n\n")
        held = await what_is_held(gateway, gauge)
        assert held == {
            "process slots": 1,
            "runtime references": 1,
            "in-flight gauge": 1,
            "key:app": 1,
            "model:gpt-up": 1,
        }
        await answer.read()
    await assert_nothing_held(gateway, gauge)


async def test_success_whole_answer_and_stream(
    upstream: FakeOpenAI, held_gateway: tuple[GatewayServer, float]
) -> None:
    gateway, gauge = held_gateway
    async with aiohttp.ClientSession() as http:
        for body in (BODY, STREAM_BODY):
            async with http.post(
                gateway.url + "/v1/chat/completions", json=body, headers=AUTH
            ) as answer:
                assert answer.status == 200
                await answer.read()
    await assert_nothing_held(gateway, gauge)


async def test_upstream_error_with_fallback_and_without(
    upstream: FakeOpenAI, held_gateway: tuple[GatewayServer, float]
) -> None:
    """The first model fails (its hold is given back at once) and the second answers; then
    both fail and the client gets the error."""
    gateway, gauge = held_gateway
    failing = Behaviour(status=500, error={"message": "boom", "type": "server_error"})
    async with aiohttp.ClientSession() as http:
        upstream.next(failing)
        async with http.post(
            gateway.url + "/v1/chat/completions", json=BODY, headers=AUTH
        ) as answer:
            assert answer.status == 200
            assert answer.headers["x-gateway-model"] == "gpt-up2"
        upstream.next(failing, failing)
        async with http.post(
            gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH
        ) as answer:
            assert answer.status >= 500
        # The failed model's room is free while the request goes on at the next one.
        upstream.next(failing, Behaviour(pace_s=0.3, words=["a", "b", "c"]))
        async with http.post(
            gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH
        ) as answer:
            await answer.content.readuntil(b"\n\n")
            held = await what_is_held(gateway, gauge)
            assert "model:gpt-up" not in held and held["model:gpt-up2"] == 1
            await answer.read()
    await assert_nothing_held(gateway, gauge)


async def test_upstream_failure_mid_stream(
    upstream: FakeOpenAI, held_gateway: tuple[GatewayServer, float]
) -> None:
    gateway, gauge = held_gateway
    upstream.next(Behaviour(reset_after_events=2))
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as answer,
    ):
        body = await answer.read()
    assert b'"error"' in body and b"[DONE]" not in body
    await assert_nothing_held(gateway, gauge)


async def test_refused_requests(
    upstream: FakeOpenAI, held_gateway: tuple[GatewayServer, float]
) -> None:
    """A bad key, a bad body and an unknown model: refused after taking only some things."""
    gateway, gauge = held_gateway
    async with aiohttp.ClientSession() as http:
        for headers, body, status in (
            ({"Authorization": "Bearer wrong"}, BODY, 401),
            (AUTH, {"model": "fast"}, 400),
            (AUTH, {**BODY, "model": "no-such-model"}, 404),
        ):
            async with http.post(
                gateway.url + "/v1/chat/completions", json=body, headers=headers
            ) as answer:
                assert answer.status == status
    await assert_nothing_held(gateway, gauge)


@pytest.mark.parametrize(
    ("behaviour", "body", "read_first_event"),
    [
        (Behaviour(first_event_delay_s=10), STREAM_BODY, False),  # before the first event
        (Behaviour(pace_s=0.5, words=["a"] * 20), STREAM_BODY, True),  # after it
        (Behaviour(delay_s=10), BODY, False),  # a whole answer: the handler is cancelled
    ],
    ids=["stream-before-first-event", "stream-after-first-event", "whole-answer"],
)
async def test_client_goes_away(
    upstream: FakeOpenAI,
    held_gateway: tuple[GatewayServer, float],
    behaviour: Behaviour,
    body: dict[str, Any],
    read_first_event: bool,
) -> None:
    gateway, gauge = held_gateway
    upstream.next(behaviour)
    async with aiohttp.ClientSession() as http:
        request = asyncio.ensure_future(
            http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH)
        )
        if read_first_event:
            answer = await request
            assert (await answer.content.readuntil(b"\n\n")).startswith(b"data: ")
            answer.close()
        else:
            await upstream_saw_it(upstream)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
    assert await upstream.wait_disconnect(within=2) is not None
    await assert_nothing_held(gateway, gauge)


async def upstream_saw_it(upstream: FakeOpenAI) -> None:
    for _ in range(200):
        if upstream.in_flight:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the request never reached the upstream")


async def test_shutdown_ends_a_stream_and_gives_everything_back(
    upstream: FakeOpenAI, held_gateway: tuple[GatewayServer, float]
) -> None:
    gateway, gauge = held_gateway
    upstream.next(Behaviour(pace_s=0.2, words=["a"] * 100))
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as answer,
    ):
        await answer.content.readuntil(b"\n\n")
        process = gateway.process
        runtime = process.current
        await gateway.stop()  # grace 0.3 s: the stream is still running when it is over
        body = await answer.read()
    assert b"shutting_down" in body
    assert process.in_flight == 0
    assert runtime.active_requests == 0
    assert IN_FLIGHT.labels("fast").value == gauge
    for subject in SUBJECTS:
        assert await process.limiter.in_flight(subject) == 0, subject
