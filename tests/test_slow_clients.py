"""Slow clients cannot take the gateway: a body is read under `server.body_timeout_s` (408 in
OpenAI's shape after it) and before any slot under `server.max_concurrent` is taken, so clients
trickling their bodies hold no capacity while everyone else is served."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config
from tests.fakes.openai_upstream import FakeOpenAI

BODY = b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}]}'


async def trickle(gateway: GatewayServer, sent: int) -> tuple[int, dict[str, object]]:
    """Send the headers and `sent` bytes of the body, then wait for the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + APP_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:sent]
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    answer = json.loads(await reader.readexactly(length))
    writer.close()
    return int(head.split()[1]), answer


async def test_a_body_that_does_not_arrive_in_time_is_a_408_and_holds_no_slot(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = base_config(upstream.url)
    raw["server"] |= {"body_timeout_s": 0.5, "max_concurrent": 2}
    gateway = await start_gateway(raw)
    started = time.perf_counter()
    slow = [asyncio.create_task(trickle(gateway, 10)) for _ in range(5)]
    await asyncio.sleep(0.1)
    # Five clients are sending slowly; with two slots, others are still served.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {APP_KEY}"}) as http:
        for _ in range(3):
            async with http.post(gateway.url + "/v1/chat/completions", data=BODY) as served:
                assert served.status == 200, await served.text()
    for status, answer in await asyncio.gather(*slow):
        assert status == 408
        assert answer == {
            "error": {
                "message": "The request body did not arrive within 0.5 seconds.",
                "type": "invalid_request_error",
                "param": None,
                "code": "request_timeout",
            }
        }
    assert time.perf_counter() - started < 3
    assert gateway.process.in_flight == 0
