"""A bug in the gateway while a stream is under way (here: a stream that raises an unexpected
exception on its third read) must not write a second HTTP answer into the stream's body: the
events sent so far are followed by one in-band error event and a proper end of the body, the
error is logged, and the usage record says what happened."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.providers import mock
from tests.conftest import StartGateway


async def test_an_unexpected_error_mid_stream_cuts_the_stream_cleanly(
    start_gateway: StartGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = 0
    real_next = mock._MockStream.next_events

    async def failing_next(self: mock._MockStream) -> list[bytes] | None:
        nonlocal reads
        reads += 1
        if reads == 3:
            raise RuntimeError("a bug")
        return await real_next(self)

    monkeypatch.setattr(mock._MockStream, "next_events", failing_next)
    usage = tmp_path / "usage.jsonl"
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {"mock": {"type": "mock"}},
        "models": {"mock-model": {"provider": "mock"}},
        "tiers": {"demo": ["mock-model"]},
        "usage": {"sinks": {"jsonl": str(usage)}},
    }
    gateway = await start_gateway(raw)
    request = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", json=request) as answer:
            assert answer.status == 200
            streamed = await answer.read()  # a whole chunked body: no ClientPayloadError
        events = [e for e in streamed.split(b"\n\n") if e]
        assert b"HTTP/1.1" not in streamed
        assert all(e.startswith(b"data: ") for e in events)
        assert b"chat.completion.chunk" in events[0] and b"[DONE]" not in streamed
        error = json.loads(events[-1][len(b"data: ") :])["error"]
        assert error["message"] == "The gateway failed while relaying the stream."
        # The connection is still sound: the next request is served normally.
        async with http.get(gateway.url + "/healthz") as health:
            assert health.status == 200
    for _ in range(200):
        if usage.exists() and usage.read_text().strip():
            break
        await asyncio.sleep(0.02)
    (record,) = [json.loads(line) for line in usage.read_text().splitlines()]
    assert record["cut"] is True and "gateway failed" in record["error"]
