"""Per-feature usage and metrics as the team meets them: tagged calls from the real openai
client, /v1/usage sums equal to what the upstream reported, records for every request, and
metrics that parse and stay bounded."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from gateway.server.serving import GatewayServer
from tests.conftest import StartGateway, free_port
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.gateway_process import start_gateway_process, write_config
from tests.redis_server import RedisServer

APP = "gw-usage-app"
OTHER = "gw-usage-other"
ADMIN = "gw-usage-admin"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
FEATURES = ["chat-api", "support-triage", "semantic-search"]


def usage_config(upstream_url: str, **usage: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {"up": {"type": "openai", "base_url": upstream_url}},
        "models": {
            "gpt": {
                "provider": "up",
                "model": "gpt-up",
                "price": {"input": 1.0, "output": 2.0, "cached_input": 0.5},
            }
        },
        "tiers": {"fast": ["gpt"]},
        "routing": {"retries": 0},
        "plans": {"tiny": {"rpm": 1}},
        "keys": [
            {"name": "app", "key": APP, "feature": "chat-api"},
            {"name": "other", "key": OTHER, "plan": "tiny"},
            {"name": "ops", "key": ADMIN, "admin": True},
        ],
        "usage": {"features": FEATURES, **usage},
    }


def sdk(server: GatewayServer, key: str = APP) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


async def usage(server: GatewayServer, key: str = ADMIN, **params: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            server.url + "/v1/usage", params=params, headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


def rows_by(answer: dict[str, Any], dimension: str) -> dict[str, dict[str, Any]]:
    return {row[dimension]: row for row in answer["data"]}


async def test_features_by_header_metadata_and_key_default(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(usage_config(upstream.url))
    async with sdk(server) as client:
        await client.chat.completions.create(
            model="fast", messages=MESSAGES, extra_headers={"X-Gateway-Feature": "support-triage"}
        )
        await client.chat.completions.create(
            model="fast", messages=MESSAGES, metadata={"feature": "semantic-search"}
        )
        await client.chat.completions.create(model="fast", messages=MESSAGES)
        # The header wins over metadata.
        await client.chat.completions.create(
            model="fast",
            messages=MESSAGES,
            metadata={"feature": "semantic-search"},
            extra_headers={"X-Gateway-Feature": "support-triage"},
        )
    features = rows_by(await usage(server, group_by="feature"), "feature")
    assert {f: r["requests"] for f, r in features.items()} == {
        "support-triage": 2,
        "semantic-search": 1,
        "chat-api": 1,
    }
    assert "feature" not in upstream.requests[1].body.get("metadata", {})


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_sums_equal_what_the_upstream_reported(
    upstream: FakeOpenAI, start_gateway: StartGateway, stream: bool
) -> None:
    server = await start_gateway(usage_config(upstream.url))
    upstream.default = Behaviour(prompt_tokens=100, completion_tokens=40, cached_tokens=30)
    async with sdk(server) as client:
        for _ in range(3):
            if stream:
                chunks = await client.chat.completions.create(
                    model="fast", messages=MESSAGES, stream=True
                )
                async for _chunk in chunks:
                    pass
            else:
                await client.chat.completions.create(model="fast", messages=MESSAGES)
    row = rows_by(await usage(server, group_by="model,feature"), "model")["gpt"]
    assert row["feature"] == "chat-api"
    assert (row["requests"], row["errors"]) == (3, 0)
    assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"]) == (300, 120, 90)
    # three times (70 input at $1 + 30 cached at $0.5 + 40 output at $2) per million
    assert row["cost_usd"] == pytest.approx(3 * (70 + 15 + 80) / 1e6)
    assert row["latency_ms"]["p50"] > 0


async def test_a_client_disconnect_mid_stream_still_yields_a_cut_record(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> None:
    path = tmp_path / "usage.jsonl"
    server = await start_gateway(usage_config(upstream.url, sinks={"jsonl": str(path)}))
    upstream.next(Behaviour(pace_s=0.2, words=["w"] * 30))
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            server.url + "/v1/chat/completions",
            json={"model": "fast", "stream": True, "messages": MESSAGES},
            headers={"Authorization": f"Bearer {APP}"},
        )
        for _ in range(3):
            await response.content.readuntil(b"\n\n")
        response.close()
    await asyncio.sleep(0.3)
    row = rows_by(await usage(server, group_by="model"), "model")["gpt"]
    assert row["requests"] == 1 and row["completion_tokens"] >= 2
    await server.stop()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 1
    record = records[0]
    assert record["cut"] is True and record["estimated"] is True
    # The client left before the answer ended: 499, as nginx logs it.
    assert record["status"] == 499 and record["error"] == "client disconnected"
    assert record["ttft_ms"] is not None and record["key"] == "app"


async def test_every_request_yields_a_record_rejected_and_failed_ones_too(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> None:
    path = tmp_path / "usage.jsonl"
    server = await start_gateway(usage_config(upstream.url, sinks={"jsonl": str(path)}))
    upstream.next(Behaviour(status=500))
    async with sdk(server, OTHER) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="fast", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="fast", messages=MESSAGES)
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=MESSAGES)
    await server.stop()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["status"] for r in records] == [502, 429, 404]
    fields = (
        "ts",
        "request_id",
        "key",
        "user",
        "feature",
        "conversation",
        "tier",
        "model",
        "provider",
        "stream",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_usd",
        "latency_ms",
        "ttft_ms",
        "attempts",
        "error",
    )
    for record in records:
        assert set(fields) <= set(record)
        assert record["key"] == "other" and record["error"]
    assert records[0]["model"] == "gpt" and records[0]["attempts"] == 1
    assert records[1]["attempts"] == 0


async def test_context_fields_reach_the_record(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> None:
    path = tmp_path / "usage.jsonl"
    server = await start_gateway(usage_config(upstream.url, sinks={"jsonl": str(path)}))
    async with sdk(server) as client:
        await client.chat.completions.create(
            model="fast",
            messages=MESSAGES,
            user="body-user",
            extra_headers={"X-Gateway-User": "end-user-9", "X-Gateway-Conversation": "conv-1"},
        )
    await server.stop()
    record = json.loads(path.read_text().splitlines()[0])
    assert (record["user"], record["conversation"]) == ("end-user-9", "conv-1")
    assert upstream.requests[-1].body["user"] == "body-user"
    assert "x-gateway-user" not in {k.lower() for k in upstream.requests[-1].headers}


async def test_a_key_sees_only_its_own_usage_and_an_admin_sees_all(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(usage_config(upstream.url))
    for key in (APP, APP, OTHER):
        async with sdk(server, key) as client:
            await client.chat.completions.create(model="fast", messages=MESSAGES)
    mine = rows_by(await usage(server, APP, group_by="key"), "key")
    assert set(mine) == {"app"} and mine["app"]["requests"] == 2
    everyone = rows_by(await usage(server, ADMIN, group_by="key"), "key")
    assert {k: r["requests"] for k, r in everyone.items()} == {"app": 2, "other": 1}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "colour"}, "group_by"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-40"}, "to"),
        ({"from": "2026-11-20", "to": "2026-11-01"}, "from"),
    ],
)
async def test_bad_usage_parameters_are_400_naming_the_parameter(
    upstream: FakeOpenAI, start_gateway: StartGateway, params: dict[str, str], param: str
) -> None:
    server = await start_gateway(usage_config(upstream.url))
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            server.url + "/v1/usage", params=params, headers={"Authorization": f"Bearer {APP}"}
        ) as response,
    ):
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error"


async def test_usage_survives_a_restart_through_the_jsonl_file(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> None:
    raw = usage_config(upstream.url, sinks={"jsonl": str(tmp_path / "usage.jsonl")})
    first = await start_gateway(raw)
    async with sdk(first) as client:
        await client.chat.completions.create(model="fast", messages=MESSAGES)
    await first.stop()
    second = await start_gateway(raw)
    assert rows_by(await usage(second, group_by="key"), "key")["app"]["requests"] == 1


# --- metrics ---------------------------------------------------------------------------------


async def scrape(server: GatewayServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as response:
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == w for k, w in labels.items())
    )


async def test_metrics_parse_and_carry_the_right_counts(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(usage_config(upstream.url))
    before = await scrape(server)
    upstream.default = Behaviour(prompt_tokens=10, completion_tokens=4, cached_tokens=2)
    async with sdk(server) as client:
        for _ in range(2):
            await client.chat.completions.create(
                model="fast", messages=MESSAGES, extra_headers={"X-Gateway-Feature": "chat-api"}
            )
        stream = await client.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
        async for _chunk in stream:
            pass
        upstream.next(Behaviour(status=500))
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="fast", messages=MESSAGES)
    after = await scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert (
        delta("gateway_requests_total", tier="fast", model="gpt", feature="chat-api", status="200")
        == 3
    )
    assert delta("gateway_requests_total", status="502") == 1
    assert delta("gateway_tokens_total", feature="chat-api", model="gpt", kind="prompt") == 30
    assert delta("gateway_tokens_total", feature="chat-api", model="gpt", kind="cached") == 6
    assert delta("gateway_cost_usd_total", feature="chat-api", model="gpt") == pytest.approx(
        3 * (8 * 1.0 + 2 * 0.5 + 4 * 2.0) / 1e6
    )
    assert (
        delta("gateway_request_duration_seconds_count", tier="fast", model="gpt", stream="false")
        == 3
    )
    assert delta("gateway_time_to_first_token_seconds_count", tier="fast", model="gpt") == 1
    assert delta("gateway_overhead_seconds_count", stream="true") == 1
    assert delta("gateway_upstream_errors_total", provider="up", model="gpt", reason="5xx") == 1
    assert value(after, "gateway_in_flight_requests", tier="fast") == 0
    # Buckets fit LLM calls: first tokens up to a minute, whole calls up to ten.
    ttft_bounds = {
        float(dict(ls)["le"])
        for (n, ls) in after
        if n == "gateway_time_to_first_token_seconds_bucket"
    }
    duration_bounds = {
        float(dict(ls)["le"]) for (n, ls) in after if n == "gateway_request_duration_seconds_bucket"
    }
    assert 60.0 in ttft_bounds and 600.0 in duration_bounds


async def test_an_unknown_feature_never_adds_a_label_value(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    server = await start_gateway(usage_config(upstream.url))
    async with sdk(server) as client:
        for i in range(5):
            await client.chat.completions.create(
                model="fast",
                messages=MESSAGES,
                extra_headers={"X-Gateway-Feature": f"made-up-{i}-{time.time()}"},
            )
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="gpt-unknown", messages=MESSAGES)
    samples = await scrape(server)
    # (The registry is the process's: other tests' configs add their own features.)
    features = {dict(ls).get("feature") for (_, ls) in samples} - {None}
    assert not any(str(f).startswith("made-up") for f in features)
    assert value(samples, "gateway_requests_total", feature="other", model="gpt") >= 5
    models = {dict(ls).get("model") for (_, ls) in samples} - {None}
    assert "gpt-unknown" not in models


# --- sinks under stress --------------------------------------------------------------------


async def test_a_hanging_sink_does_not_slow_requests(
    upstream: FakeOpenAI, start_gateway: StartGateway, redis_server: RedisServer
) -> None:
    raw = usage_config(upstream.url, sinks={"redis": True})
    raw["limits"] = {"redis_url": redis_server.url}  # the usage sink's Redis; limits in memory
    server = await start_gateway(raw)
    async with sdk(server) as client:
        await client.chat.completions.create(model="fast", messages=MESSAGES)
        redis_server.pause()  # Redis hangs: the sink's writes never answer
        try:
            started = time.perf_counter()
            for _ in range(30):
                await client.chat.completions.create(model="fast", messages=MESSAGES)
            elapsed = time.perf_counter() - started
        finally:
            redis_server.resume()
    assert elapsed < 3.0, f"30 requests took {elapsed:.2f}s behind a hanging sink"


async def test_two_replicas_with_the_redis_sink_see_each_others_usage(
    upstream: FakeOpenAI, redis_server: RedisServer, tmp_path: Path
) -> None:
    raw = usage_config(upstream.url, sinks={"redis": True})
    raw["limits"] = {"backend": "redis", "redis_url": redis_server.url}
    path = tmp_path / "config.yaml"
    write_config(path, raw)
    ports = [free_port(), free_port()]
    processes = [await start_gateway_process(path, port) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for url, count in zip(urls, (2, 3), strict=True):
            async with openai.AsyncOpenAI(
                base_url=url + "/v1", api_key=APP, max_retries=0
            ) as client:
                for _ in range(count):
                    await client.chat.completions.create(model="fast", messages=MESSAGES)
        async with aiohttp.ClientSession() as http:
            for url in urls:
                deadline = time.perf_counter() + 5
                while True:
                    async with http.get(
                        url + "/v1/usage",
                        params={"group_by": "key"},
                        headers={"Authorization": f"Bearer {ADMIN}"},
                    ) as r:
                        answer = await r.json()
                    rows = {row["key"]: row["requests"] for row in answer["data"]}
                    if rows.get("app") == 5:
                        break
                    assert time.perf_counter() < deadline, answer
                    await asyncio.sleep(0.2)
                assert answer["source"] == "redis"
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 15)


async def test_jsonl_lines_are_whole_after_a_sigkill_during_load(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    usage_path = tmp_path / "usage.jsonl"
    raw = usage_config(upstream.url, sinks={"jsonl": str(usage_path)})
    path = tmp_path / "config.yaml"
    write_config(path, raw)
    port = free_port()
    process = await start_gateway_process(path, port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": "fast", "messages": MESSAGES}
    async with aiohttp.ClientSession() as http:
        stop_at = time.perf_counter() + 20  # bounded, whatever happens

        async def load() -> None:
            while time.perf_counter() < stop_at:
                try:
                    async with http.post(
                        url, json=body, headers={"Authorization": f"Bearer {APP}"}
                    ) as r:
                        await r.read()
                except aiohttp.ClientError:
                    return

        workers = [asyncio.create_task(load()) for _ in range(16)]
        deadline = time.perf_counter() + 10
        while not usage_path.exists() or usage_path.stat().st_size < 20_000:
            assert time.perf_counter() < deadline, "no usage written under load"
            await asyncio.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 10)
        await asyncio.wait_for(asyncio.gather(*workers), 30)
    lines = usage_path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file ends in the middle of a line"
    for line in lines[:-1]:
        assert json.loads(line)["request_id"]
