"""Live reload and graceful shutdown: ops edit config.yaml while traffic flows and roll
replicas without dropping streams."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway.server.serving import GatewayServer
from tests.conftest import free_port, to_config
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.gateway_process import log_path, start_gateway_process, write_config

ROOT = Path(__file__).resolve().parent.parent
BODY = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def second() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    fake.default = Behaviour(words=["Second", " upstream"])
    await fake.start()
    yield fake
    await fake.stop()


def two_route_config(first_url: str, second_url: str, tier_model: str) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 5},
        "providers": {
            "one": {"type": "openai", "base_url": first_url},
            "two": {"type": "openai", "base_url": second_url},
        },
        "models": {"m1": {"provider": "one"}, "m2": {"provider": "two"}},
        "tiers": {"fast": [tier_model]},
        "routing": {"default_tier": "fast", "retries": 0},
    }


@pytest.fixture
async def watched(
    tmp_path: Path, upstream: FakeOpenAI, second: FakeOpenAI
) -> AsyncIterator[tuple[GatewayServer, Path]]:
    path = tmp_path / "config.yaml"
    raw = two_route_config(upstream.url, second.url, "m1")
    write_config(path, raw)
    server = GatewayServer(
        to_config(raw), "127.0.0.1", 0, config_path=str(path), reload_poll_s=0.05
    )
    await server.start()
    yield server, path
    await server.stop()


async def wait_for(predicate: Any, within: float = 3.0) -> None:
    deadline = time.perf_counter() + within
    while not await predicate():
        assert time.perf_counter() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def model_of(http: aiohttp.ClientSession, server: GatewayServer) -> str:
    async with http.post(server.url + "/v1/chat/completions", json=BODY) as response:
        assert response.status == 200
        return response.headers["x-gateway-model"]


async def test_an_edit_during_a_stream_keeps_the_stream_on_the_old_route(
    watched: tuple[GatewayServer, Path], upstream: FakeOpenAI, second: FakeOpenAI
) -> None:
    server, path = watched
    upstream.next(Behaviour(pace_s=0.2, words=["a", "b", "c", "d", "e", "f"]))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.url + "/v1/chat/completions", json={**BODY, "stream": True}
        ) as streaming:
            first = await streaming.content.readuntil(b"\n\n")
            assert first.startswith(b"data:")
            write_config(path, two_route_config(upstream.url, second.url, "m2"))

            async def switched() -> bool:
                return await model_of(http, server) == "m2"

            await wait_for(switched)
            rest = await streaming.read()
        assert streaming.headers["x-gateway-model"] == "m1"
        assert rest.endswith(b"data: [DONE]\n\n") and b'"f"' in rest
        assert b"Second" not in rest


async def test_an_invalid_edit_changes_nothing_and_is_counted(
    watched: tuple[GatewayServer, Path],
    upstream: FakeOpenAI,
    second: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, path = watched

    async def errors() -> float:
        async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith('gateway_config_reloads_total{result="error"}'):
                    return float(line.split()[-1])
        return 0.0

    before = await errors()
    bad = two_route_config(upstream.url, second.url, "m2")
    bad["tiers"]["fast"] = ["m2", "no-such-model"]
    write_config(path, bad)

    async def counted() -> bool:
        return await errors() == before + 1

    await wait_for(counted)
    assert any(
        "tiers.fast[1]: unknown model 'no-such-model'" in str(r.__dict__.get("problems"))
        for r in caplog.records
    )
    write_config(path, "server: {port: [unclosed\n")
    await wait_for(lambda: _at_least(errors, before + 2))
    async with aiohttp.ClientSession() as http:
        assert await model_of(http, server) == "m1"
        async with http.get(server.url + "/readyz") as response:
            assert response.status == 200


async def _at_least(value: Any, target: float) -> bool:
    return bool(await value() >= target)


async def test_admin_reload_endpoint(
    watched: tuple[GatewayServer, Path], upstream: FakeOpenAI, second: FakeOpenAI
) -> None:
    server, path = watched
    server.reloader.poll_s = 3600  # type: ignore[union-attr] # only the endpoint reloads
    await asyncio.sleep(0.1)
    path.write_text(yaml.safe_dump(two_route_config(upstream.url, second.url, "m2")))
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + "/admin/reload") as response:
            assert response.status == 200, await response.text()
        assert await model_of(http, server) == "m2"
        write_config(path, "tiers: {fast: [ghost]}\n")
        async with http.post(server.url + "/admin/reload") as response:
            assert response.status == 400
            error = (await response.json())["error"]
            assert error["code"] == "invalid_config"
            assert "tiers.fast[0]: unknown model 'ghost'" in error["message"]
        assert await model_of(http, server) == "m2"


async def test_admin_reload_needs_an_admin_key(
    tmp_path: Path, upstream: FakeOpenAI, second: FakeOpenAI
) -> None:
    raw = two_route_config(upstream.url, second.url, "m1")
    raw["keys"] = [{"name": "app", "key": "k-app"}, {"name": "ops", "key": "k-ops", "admin": True}]
    path = tmp_path / "config.yaml"
    write_config(path, raw)
    server = GatewayServer(to_config(raw), "127.0.0.1", 0, config_path=str(path))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            for key, status in (("k-app", 403), ("k-ops", 200)):
                async with http.post(
                    server.url + "/admin/reload", headers={"Authorization": f"Bearer {key}"}
                ) as response:
                    assert response.status == status
    finally:
        await server.stop()


async def test_a_removed_providers_session_closes_after_its_last_request(
    watched: tuple[GatewayServer, Path], upstream: FakeOpenAI, second: FakeOpenAI
) -> None:
    server, path = watched
    old_provider = server.process.current.providers["one"]
    upstream.next(Behaviour(pace_s=0.2))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            server.url + "/v1/chat/completions", json={**BODY, "stream": True}
        ) as streaming:
            await streaming.content.readuntil(b"\n\n")
            raw = two_route_config(upstream.url, second.url, "m2")
            del raw["providers"]["one"]
            del raw["models"]["m1"]
            write_config(path, raw)

            async def swapped() -> bool:
                return "one" not in server.process.current.providers

            await wait_for(swapped)
            assert old_provider._pool is not None  # type: ignore[attr-defined]
            assert not old_provider._pool.closed  # type: ignore[attr-defined]
            assert (await streaming.read()).endswith(b"data: [DONE]\n\n")

        async def closed() -> bool:
            return old_provider._pool is None  # type: ignore[attr-defined]

        await wait_for(closed)


async def test_providers_that_did_not_change_keep_their_pool(
    watched: tuple[GatewayServer, Path], upstream: FakeOpenAI, second: FakeOpenAI
) -> None:
    server, path = watched
    before = server.process.current.providers["two"]
    raw = two_route_config(upstream.url, second.url, "m2")
    write_config(path, raw)

    async def swapped() -> bool:
        return server.process.current.config.tiers["fast"] == ["m2"]

    await wait_for(swapped)
    assert server.process.current.providers["two"] is before


# --- the real command: SIGHUP and SIGTERM ---------------------------------------------------


async def test_sighup_reloads(tmp_path: Path, upstream: FakeOpenAI, second: FakeOpenAI) -> None:
    path = tmp_path / "config.yaml"
    raw = two_route_config(upstream.url, second.url, "m1")
    write_config(path, raw)
    port = free_port()
    process = await start_gateway_process(path, port)
    url = f"http://127.0.0.1:{port}"
    try:
        # Written in place with the same size and mtime second would still be seen by the
        # watcher; SIGHUP makes it immediate.
        write_config(path, two_route_config(upstream.url, second.url, "m2"))
        process.send_signal(signal.SIGHUP)
        async with aiohttp.ClientSession() as http:

            async def switched() -> bool:
                async with http.post(url + "/v1/chat/completions", json=BODY) as response:
                    return response.headers["x-gateway-model"] == "m2"

            await wait_for(switched, 3)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 10)


async def test_sigterm_lets_a_running_stream_finish_refuses_new_ones_and_exits_0(
    tmp_path: Path, upstream: FakeOpenAI, second: FakeOpenAI
) -> None:
    path = tmp_path / "config.yaml"
    usage_file = tmp_path / "usage.jsonl"
    raw = two_route_config(upstream.url, second.url, "m1")
    raw["usage"] = {"sinks": {"jsonl": str(usage_file)}}
    write_config(path, raw)
    port = free_port()
    process = await start_gateway_process(path, port)
    url = f"http://127.0.0.1:{port}"
    upstream.next(Behaviour(pace_s=0.15, words=["w"] * 10))
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url + "/v1/chat/completions", json={**BODY, "stream": True}
        ) as streaming:
            await streaming.content.readuntil(b"\n\n")
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as other, other.get(url + "/healthz"):
                    pass
            rest = await streaming.read()
        assert rest.endswith(b"data: [DONE]\n\n")
    await asyncio.wait_for(process.wait(), 10)
    assert process.returncode == 0, log_path(path, port).read_text()[-2000:]
    # The stream's usage record was flushed before the process exited.
    records = [json.loads(line) for line in usage_file.read_text().splitlines()]
    assert [(r["stream"], r["status"], r["cut"]) for r in records] == [(True, 200, False)]


async def test_sigterm_ends_streams_still_running_after_the_grace_period_in_band(
    tmp_path: Path, upstream: FakeOpenAI, second: FakeOpenAI
) -> None:
    path = tmp_path / "config.yaml"
    raw = two_route_config(upstream.url, second.url, "m1")
    raw["server"]["shutdown_grace_s"] = 0.5
    write_config(path, raw)
    port = free_port()
    process = await start_gateway_process(path, port)
    url = f"http://127.0.0.1:{port}"
    upstream.next(Behaviour(pace_s=0.5, words=["w"] * 40))
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/chat/completions", json={**BODY, "stream": True}) as streaming,
    ):
        await streaming.content.readuntil(b"\n\n")
        process.send_signal(signal.SIGTERM)
        rest = await streaming.read()
    assert b"shutting_down" in rest
    assert b"[DONE]" not in rest
    await asyncio.wait_for(process.wait(), 10)
    assert process.returncode == 0


async def test_readyz_turns_503_as_soon_as_draining_starts(
    watched: tuple[GatewayServer, Path], upstream: FakeOpenAI
) -> None:
    server, _ = watched
    upstream.next(Behaviour(pace_s=0.3, words=["w"] * 5))
    # A probe's connection opened before the shutdown stays usable while requests drain.
    async with aiohttp.ClientSession() as probe, aiohttp.ClientSession() as http:
        async with probe.get(server.url + "/readyz") as response:
            assert response.status == 200
        async with http.post(
            server.url + "/v1/chat/completions", json={**BODY, "stream": True}
        ) as streaming:
            await streaming.content.readuntil(b"\n\n")
            stopping = asyncio.create_task(server.stop())
            await asyncio.sleep(0.1)
            async with probe.get(server.url + "/readyz") as response:
                assert response.status == 503
                assert "draining" in str(await response.json())
            await streaming.read()
        await stopping


async def test_limits_survive_a_reload(
    watched: tuple[GatewayServer, Path], upstream: FakeOpenAI, second: FakeOpenAI
) -> None:
    server, path = watched
    raw = two_route_config(upstream.url, second.url, "m1")
    raw["plans"] = {"tiny": {"rpm": 2}}
    raw["keys"] = [{"name": "app", "key": "k-app", "plan": "tiny"}]
    write_config(path, raw)
    await server.reloader.reload("test")  # type: ignore[union-attr]
    auth = {"Authorization": "Bearer k-app"}
    async with aiohttp.ClientSession() as http:
        for expected in (200, 200, 429):
            async with http.post(
                server.url + "/v1/chat/completions", json=BODY, headers=auth
            ) as response:
                assert response.status == expected
        raw["tiers"]["fast"] = ["m2"]  # a routing change, same plan
        write_config(path, raw)
        assert (await server.reloader.reload("test")).ok  # type: ignore[union-attr]
        async with http.post(
            server.url + "/v1/chat/completions", json=BODY, headers=auth
        ) as response:
            assert response.status == 429  # the minute's count survived the swap
