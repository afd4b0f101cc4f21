"""Tier chains: fallback on exactly the configured kinds, retries with backoff, cooldowns,
streams that fall back only before their first event, and the error that lists attempts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, free_port
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def second() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.default = Behaviour(words=["Second", " model"])
    await fake.start()
    yield fake
    await fake.stop()


def chain_config(first_url: str, second_url: str, **routing: Any) -> dict[str, Any]:
    timeout = {"connect": 1, "first_token": 1, "total": 2}
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "providers": {
            "a": {"type": "openai", "base_url": first_url},
            "b": {"type": "openai", "base_url": second_url},
        },
        "models": {
            "model-a": {
                "provider": "a",
                "model": "a-id",
                "timeout": timeout,
                "fallbacks": ["model-b"],
            },
            "model-b": {"provider": "b", "model": "b-id", "timeout": timeout},
            "lonely": {"provider": "a", "timeout": timeout},
        },
        "tiers": {"fast": ["model-a", "model-b"], "solo": ["lonely"]},
        "routing": {"retries": 0, **routing},
    }


@pytest.fixture
async def sdk_for() -> AsyncIterator[Any]:
    clients: list[openai.AsyncOpenAI] = []

    def make(gateway: GatewayServer) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def ask(client: openai.AsyncOpenAI, model: str = "fast") -> Any:
    return await client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)


def metric(gateway_url_text: str, name: str, labels: dict[str, str]) -> float:
    for family in text_string_to_metric_families(gateway_url_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def scrape(gateway: GatewayServer) -> str:
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/metrics") as response:
        return await response.text()


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (Behaviour(status=500), "5xx"),
        (Behaviour(status=503), "5xx"),
        (Behaviour(status=429), "429"),
        (Behaviour(delay_s=3), "timeout"),
        (Behaviour(reset_before_headers=True), "reset"),
        (Behaviour(garbage=True), "bad_response"),
    ],
)
async def test_falls_back_on_each_trigger(
    upstream: FakeOpenAI,
    second: FakeOpenAI,
    start_gateway: StartGateway,
    sdk_for: Any,
    behaviour: Behaviour,
    reason: str,
) -> None:
    gateway = await start_gateway(chain_config(upstream.url, second.url))
    before = metric(
        await scrape(gateway),
        "gateway_fallbacks_total",
        {"from_model": "model-a", "to_model": "model-b", "reason": reason},
    )
    upstream.next(behaviour)
    raw = await ask(sdk_for(gateway))
    assert raw.parse().choices[0].message.content == "Second model"
    assert raw.headers["x-gateway-model"] == "model-b"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert second.requests[-1].body["model"] == "b-id"
    text = await scrape(gateway)
    assert (
        metric(
            text,
            "gateway_fallbacks_total",
            {"tier": "fast", "from_model": "model-a", "to_model": "model-b", "reason": reason},
        )
        == before + 1
    )
    assert (
        metric(
            text,
            "gateway_upstream_errors_total",
            {"provider": "a", "model": "model-a", "reason": reason},
        )
        >= 1
    )


async def test_falls_back_when_the_first_upstream_refuses_connections(
    second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(chain_config(f"http://127.0.0.1:{free_port()}/v1", second.url))
    raw = await ask(sdk_for(gateway))
    assert raw.headers["x-gateway-model"] == "model-b"


async def test_a_400_goes_straight_back_without_fallback(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(chain_config(upstream.url, second.url, retries=2))
    upstream.next(Behaviour(status=400))
    with pytest.raises(openai.BadRequestError):
        await ask(sdk_for(gateway))
    assert len(upstream.requests) == 1
    assert second.requests == []


async def test_only_the_listed_kinds_move_on(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(
        chain_config(upstream.url, second.url, fallback_on=["connect", "timeout"])
    )
    upstream.next(Behaviour(status=500))
    with pytest.raises(openai.InternalServerError):
        await ask(sdk_for(gateway))
    assert second.requests == []


async def test_context_length_moves_on_only_when_listed(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    too_long = Behaviour(
        status=400,
        error={
            "message": "This model's maximum context length is 4096 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        },
    )
    plain = await start_gateway(chain_config(upstream.url, second.url))
    upstream.next(too_long)
    with pytest.raises(openai.BadRequestError) as caught:
        await ask(sdk_for(plain))
    assert caught.value.code == "context_length_exceeded"
    assert second.requests == []

    listed = await start_gateway(
        chain_config(
            upstream.url,
            second.url,
            retries=2,
            fallback_on=["connect", "timeout", "429", "5xx", "context_length"],
        )
    )
    upstream.next(too_long)
    raw = await ask(sdk_for(listed))
    assert raw.headers["x-gateway-model"] == "model-b"
    assert raw.headers["x-gateway-attempts"] == "2"  # the same model is not retried


async def test_retries_the_same_model_with_backoff_before_falling_back(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(chain_config(upstream.url, second.url, retries=2))
    upstream.next(Behaviour(status=500), Behaviour(status=502))
    raw = await ask(sdk_for(gateway))
    assert raw.headers["x-gateway-model"] == "model-a"
    assert raw.headers["x-gateway-attempts"] == "3"
    assert len(upstream.requests) == 3
    assert second.requests == []


async def test_short_retry_after_is_honoured(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(chain_config(upstream.url, second.url, retries=1))
    upstream.next(Behaviour(status=429, headers={"retry-after-ms": "400"}))
    started = time.perf_counter()
    raw = await ask(sdk_for(gateway))
    assert time.perf_counter() - started >= 0.4
    assert raw.headers["x-gateway-model"] == "model-a"
    assert second.requests == []


async def test_long_retry_after_moves_on_at_once(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(chain_config(upstream.url, second.url, retries=3))
    upstream.next(Behaviour(status=429, headers={"retry-after": "30"}))
    started = time.perf_counter()
    raw = await ask(sdk_for(gateway))
    assert time.perf_counter() - started < 1
    assert raw.headers["x-gateway-model"] == "model-b"
    assert len(upstream.requests) == 1


async def test_cooldown_skips_a_failing_model_then_tries_it_again(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(
        chain_config(upstream.url, second.url, cooldown={"failures": 2, "seconds": 0.6})
    )
    client = sdk_for(gateway)
    upstream.next(Behaviour(status=500), Behaviour(status=500))
    for _ in range(2):
        assert (await ask(client)).headers["x-gateway-model"] == "model-b"
    assert metric(await scrape(gateway), "gateway_model_available", {"model": "model-a"}) == 0
    # Cooling down: the next requests do not touch model-a at all.
    for _ in range(3):
        raw = await ask(client)
        assert raw.headers["x-gateway-model"] == "model-b"
        assert raw.headers["x-gateway-attempts"] == "1"
    assert len(upstream.requests) == 2
    await asyncio.sleep(0.7)
    assert metric(await scrape(gateway), "gateway_model_available", {"model": "model-a"}) == 1
    # Half-open: the next request tries model-a again, and its success resets it.
    assert (await ask(client)).headers["x-gateway-model"] == "model-a"
    upstream.next(Behaviour(status=500))
    assert (await ask(client)).headers["x-gateway-model"] == "model-b"
    assert (await ask(client)).headers["x-gateway-model"] == "model-a"


async def test_a_failed_half_open_try_cools_down_again_at_once(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(
        chain_config(upstream.url, second.url, cooldown={"failures": 1, "seconds": 0.4})
    )
    client = sdk_for(gateway)
    upstream.next(Behaviour(status=500), Behaviour(status=500))
    await ask(client)
    await asyncio.sleep(0.5)
    assert (await ask(client)).headers["x-gateway-attempts"] == "2"  # tried, failed
    assert (await ask(client)).headers["x-gateway-attempts"] == "1"  # cooling again
    assert len(upstream.requests) == 2


async def test_when_every_model_cools_down_the_least_recently_failed_is_tried(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(
        chain_config(upstream.url, second.url, cooldown={"failures": 1, "seconds": 60})
    )
    client = sdk_for(gateway)
    upstream.next(Behaviour(status=500))
    second.next(Behaviour(status=500))
    with pytest.raises(openai.APIStatusError):
        await ask(client)  # a fails first, then b: both cooling
    raw = await ask(client)
    assert raw.headers["x-gateway-model"] == "model-a"
    assert raw.parse().choices[0].message.content == "Hello from the upstream"


async def test_all_models_failed_lists_every_attempt(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(chain_config(upstream.url, second.url, retries=1))
    upstream.next(Behaviour(status=500), Behaviour(status=502))
    second.next(Behaviour(status=503), Behaviour(delay_s=3))
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(sdk_for(gateway))
    error = caught.value
    assert error.status_code == 503
    assert error.type == "all_models_failed" and error.code == "all_models_failed"
    for part in (
        "model-a: 5xx, upstream status 500",
        "model-a: 5xx, upstream status 502",
        "model-b: 5xx, upstream status 503",
        "model-b: timeout",
    ):
        assert part in error.message
    assert error.response.headers["x-should-retry"] == "true"
    assert error.response.headers["x-gateway-attempts"] == "4"


async def test_every_model_rate_limited_is_429_with_the_shortest_wait(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(chain_config(upstream.url, second.url))
    upstream.next(Behaviour(status=429, headers={"retry-after": "20"}))
    second.next(Behaviour(status=429, headers={"retry-after": "5"}))
    with pytest.raises(openai.RateLimitError) as caught:
        await ask(sdk_for(gateway))
    assert caught.value.response.headers["retry-after"] == "5"


async def test_a_model_asked_by_name_falls_back_to_its_own_fallbacks(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(chain_config(upstream.url, second.url))
    upstream.next(Behaviour(status=500))
    raw = await ask(sdk_for(gateway), model="model-a")
    assert raw.headers["x-gateway-model"] == "model-b"
    second.next(Behaviour(status=500))
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(sdk_for(gateway), model="model-b")  # no fallbacks of its own
    assert caught.value.status_code == 502
    assert second.requests[-1].body["model"] == "b-id"


async def test_a_one_model_chain_reports_the_upstreams_own_failure(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway, sdk_for: Any
) -> None:
    gateway = await start_gateway(chain_config(upstream.url, second.url, retries=1))
    upstream.next(Behaviour(status=500), Behaviour(status=500))
    with pytest.raises(openai.InternalServerError) as caught:
        await ask(sdk_for(gateway), model="solo")
    assert caught.value.status_code == 502
    assert "attempts: lonely: 5xx" in caught.value.message


# --- streams ---------------------------------------------------------------------------------


STREAM = {"model": "fast", "stream": True, "messages": MESSAGES}


async def stream_text(gateway: GatewayServer) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gateway.url + "/v1/chat/completions",
            json=STREAM,
            headers={"Authorization": f"Bearer {APP_KEY}"},
        ) as response,
    ):
        return response.status, dict(response.headers), await response.read()


@pytest.mark.parametrize(
    "behaviour",
    [
        Behaviour(status=500),
        Behaviour(first_event_delay_s=3),
        Behaviour(error_event_after=0),
        Behaviour(reset_before_headers=True),
    ],
)
async def test_a_stream_falls_back_before_its_first_event(
    upstream: FakeOpenAI,
    second: FakeOpenAI,
    start_gateway: StartGateway,
    behaviour: Behaviour,
) -> None:
    gateway = await start_gateway(chain_config(upstream.url, second.url))
    upstream.next(behaviour)
    status, headers, body = await stream_text(gateway)
    assert status == 200
    assert headers["x-gateway-model"] == "model-b"
    assert b'"Second"' in body and body.endswith(b"data: [DONE]\n\n")


async def test_a_stream_that_fails_after_its_first_event_never_switches_model(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(chain_config(upstream.url, second.url, retries=2))
    upstream.next(Behaviour(reset_after_events=2))
    status, headers, body = await stream_text(gateway)
    assert status == 200
    assert headers["x-gateway-model"] == "model-a"
    assert b"Second" not in body
    assert b'"error"' in body and b"[DONE]" not in body
    assert second.requests == []


async def test_fallback_continues_behind_keep_alives(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = chain_config(upstream.url, second.url)
    raw["server"]["keepalive_s"] = 0.2
    gateway = await start_gateway(raw)
    upstream.next(Behaviour(first_event_delay_s=3))  # first_token is 1 s
    status, headers, body = await stream_text(gateway)
    assert status == 200
    # The headers left before any model answered: they do not guess which one will.
    assert headers["x-gateway-model"] == "" and headers["x-gateway-attempts"] == ""
    assert body.startswith(b": keep-alive\n\n")
    assert b'"Second"' in body and body.endswith(b"data: [DONE]\n\n")


async def test_a_stream_whose_chain_fails_behind_keep_alives_ends_in_band(
    upstream: FakeOpenAI, second: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = chain_config(upstream.url, second.url)
    raw["server"]["keepalive_s"] = 0.2
    gateway = await start_gateway(raw)
    upstream.next(Behaviour(first_event_delay_s=3))
    second.next(Behaviour(first_event_delay_s=3))
    status, _, body = await stream_text(gateway)
    assert status == 200
    assert b"all_models_failed" in body and b"[DONE]" not in body


async def test_replicas_sharing_redis_share_cooldowns(
    upstream: FakeOpenAI,
    second: FakeOpenAI,
    start_gateway: StartGateway,
    sdk_for: Any,
    redis_server: Any,
) -> None:
    raw = chain_config(upstream.url, second.url, cooldown={"failures": 2, "seconds": 30})
    raw["limits"] = {"backend": "redis", "redis_url": redis_server.url}
    one = await start_gateway(raw)
    two = await start_gateway(raw)
    upstream.next(Behaviour(status=500), Behaviour(status=500))
    for gateway in (one, two):  # one failure seen by each replica: two in a row in all
        assert (await ask(sdk_for(gateway))).headers["x-gateway-model"] == "model-b"
    assert len(upstream.requests) == 2
    for gateway in (one, two):
        raw_answer = await ask(sdk_for(gateway))
        assert raw_answer.headers["x-gateway-model"] == "model-b"
        assert raw_answer.headers["x-gateway-attempts"] == "1"
    assert len(upstream.requests) == 2
    assert metric(await scrape(two), "gateway_model_available", {"model": "model-a"}) == 0
