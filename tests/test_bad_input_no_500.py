"""Inputs that used to give a 500 (or block the event loop) now get the API's own error shape,
or are simply served: a message whose `tool_calls` is not a list on a plan with a tpm limit,
`Authorization` bytes that are not UTF-8, a text part whose text is a number on the mock, an
embeddings `dimensions` of ten million on the mock. And a stream ended by the gateway's
shutdown is recorded as 503, not as the client's 499."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config
from tests.fakes.openai_upstream import FakeOpenAI

AUTH = {"Authorization": f"Bearer {APP_KEY}"}


def limited_config(upstream_url: str, usage_path: Path) -> dict[str, Any]:
    raw = base_config(upstream_url)
    raw["plans"]["pro"]["tpm"] = 1_000_000  # the token estimate walks every message
    raw["usage"] = {"sinks": {"jsonl": str(usage_path)}}
    return raw


async def test_bad_inputs_get_the_apis_errors_not_500s(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = await start_gateway(limited_config(upstream.url, tmp_path / "u.jsonl"))
    url = gateway.url
    async with aiohttp.ClientSession(headers=AUTH) as http:
        odd_calls = {
            "model": "demo",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "x", "tool_calls": 5},
                {"role": "user", "content": "again"},
            ],
        }
        async with http.post(url + "/v1/chat/completions", json=odd_calls) as answer:
            assert answer.status < 500, await answer.text()
        number_text = {
            "model": "demo",
            "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
        }
        async with http.post(url + "/v1/chat/completions", json=number_text) as answer:
            assert answer.status < 500, await answer.text()
        huge = {"model": "mock-model", "input": "hi", "dimensions": 10_000_000}
        started = time.perf_counter()
        async with http.post(url + "/v1/embeddings", json=huge) as answer:
            assert answer.status == 400
            error = (await answer.json())["error"]
            assert error["param"] == "dimensions" and error["type"] == "invalid_request_error"
        assert time.perf_counter() - started < 1.0
    assert await raw_request(gateway, b"Authorization: Bearer \xff\xfe\xc3\x28key\r\n") == 401


async def raw_request(
    gateway: GatewayServer,
    header_line: bytes,
    body: bytes = b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}]}',
) -> int:
    """The status of a request sent byte for byte (clients will not send non-UTF-8 headers)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + header_line
        + b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % len(body)
        + body
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return int(status_line.split()[1])


async def test_context_headers_that_are_not_utf8_are_recorded_not_lost(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> None:
    """Bytes that are not UTF-8 in `X-Gateway-Feature` / `X-Gateway-User` used to reach the log
    line and the usage record as lone surrogates, which JSON cannot encode: the access log
    printed a traceback and the usage record was lost. They are kept as U+FFFD."""
    usage = tmp_path / "u.jsonl"
    gateway = await start_gateway(limited_config(upstream.url, usage))
    headers = (
        b"Authorization: Bearer " + APP_KEY.encode() + b"\r\n"
        b"X-Gateway-Feature: triage-\x80\r\nX-Gateway-User: \xc3\x28ana\r\n"
    )
    body = b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}]}'
    assert await raw_request(gateway, headers, body) == 200
    for _ in range(100):
        if usage.exists() and usage.read_text():
            break
        await asyncio.sleep(0.02)
    (record,) = [json.loads(line) for line in usage.read_text().splitlines()]
    assert record["feature"] == "triage-\ufffd"
    assert record["user"] == "\ufffd(ana"


async def test_a_stream_ended_by_shutdown_is_recorded_as_503(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    from tests.conftest import to_config
    from tests.fakes.openai_upstream import Behaviour

    usage = tmp_path / "u.jsonl"
    raw = base_config(upstream.url)
    raw["server"]["shutdown_grace_s"] = 0.3
    raw["usage"] = {"sinks": {"jsonl": str(usage)}}
    gateway = GatewayServer(to_config(raw), "127.0.0.1", 0)
    await gateway.start()
    upstream.next(Behaviour(pace_s=0.2, words=["a"] * 100))
    body = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=body, headers=AUTH) as answer,
    ):
        await answer.content.readuntil(b"\n\n")
        await gateway.stop()
        assert b"shutting_down" in await answer.read()
    (record,) = [json.loads(line) for line in usage.read_text().splitlines()]
    assert record["status"] == 503 and record["error"] == "ended by gateway shutdown"
