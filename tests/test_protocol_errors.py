"""What the connection layer answers before any handler runs, over raw sockets: requests the
HTTP parser refuses get OpenAI's error envelope with the status that says why (414, 431, 400)
and one log line; `Expect: 100-continue` with a body over the limit gets its 413 before any
`100 Continue`; one address cannot hold more than `server.max_pending_per_address`
connections without a complete request."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError

from gateway.pipeline.pending import PendingClients
from gateway.server.protocol import GatewayAppRunner
from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config
from tests.fakes.openai_upstream import FakeOpenAI

BODY = b'{"model": "demo", "messages": [{"role": "user", "content": "hi"}]}'
HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Authorization: Bearer " + APP_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
)


async def exchange(gateway: GatewayServer, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `raw`, read one answer: status, headers (lower-cased names), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(raw)
        await writer.drain()
        return await read_answer(reader)
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    return int(status_line.split()[1]), headers, body


def openai_error(body: bytes) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


def parser_error(body: bytes) -> dict[str, Any]:
    """A parser refusal's error object, checked to be in both vendors' envelopes: OpenAI's
    `error` with its four fields, and Anthropic's `{"type": "error", "error": {"type",
    "message"}}` (the parser fails before the path is known: either API's client may read it)."""
    answer = json.loads(body)
    assert set(answer) == {"type", "error"} and answer["type"] == "error"
    error = openai_error(body)
    assert isinstance(error["message"], str) and error["message"]
    return error


@pytest.fixture
async def gateway(upstream: FakeOpenAI, start_gateway: StartGateway) -> GatewayServer:
    return await start_gateway(base_config(upstream.url))


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"GET /v1/models?" + b"x" * 20000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET /v1/models HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 9000 + b"\r\n\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (
            b"GET /v1/models HTTP/1.1\r\nHost: a\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
            + b"\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (b"GET /v1/models HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400, "bad_request"),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, "bad_request"),
    ],
    ids=["long-url", "long-header", "many-headers", "bad-header-line", "bad-length"],
)
async def test_parser_refusals_are_errors_both_apis_read(
    gateway: GatewayServer,
    raw: bytes,
    status: int,
    code: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    got_status, headers, body = await exchange(gateway, raw)
    assert got_status == status
    assert headers["content-type"].startswith("application/json")
    error = parser_error(body)
    assert error["code"] == code and error["type"] == "invalid_request_error"
    refusals = [r for r in caplog.records if r.getMessage() == "request refused by the HTTP parser"]
    assert len(refusals) == 1
    assert not [r for r in caplog.records if r.exc_info]  # one line, no traceback
    # The gateway is fine afterwards.
    ok, _, _ = await exchange(gateway, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert ok == 200


async def test_expect_continue_over_the_limit_is_413_before_any_continue(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = base_config(upstream.url)
    raw["server"]["max_body_mb"] = 1
    gateway = await start_gateway(raw)
    big = HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (50 * 1024 * 1024)
    status, _, body = await exchange(gateway, big)  # the body is never sent
    assert status == 413
    assert openai_error(body)["message"].startswith("The request body is larger")
    # Within the limit: `100 Continue`, then, once the body is sent, the answer.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(HEAD + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(BODY))
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(BODY)
        await writer.drain()
        status, _, body = await read_answer(reader)
        assert status == 200 and json.loads(body)["object"] == "chat.completion"
    finally:
        writer.close()


async def closed_at_once(gateway: GatewayServer) -> bool:
    """Whether a new connection is closed by the gateway before it sends anything."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        return await asyncio.wait_for(reader.read(1), 2) == b""
    except TimeoutError:
        return False
    finally:
        writer.close()


async def test_one_address_cannot_hold_many_incomplete_requests(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = base_config(upstream.url)
    raw["server"] |= {"max_pending_per_address": 3, "body_timeout_s": 5}
    gateway = await start_gateway(raw)
    held = []
    # Three connections that never finish their headers...
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127")
        await writer.drain()
        held.append((reader, writer))
    await asyncio.sleep(0.1)
    assert gateway.process.pending.count("127.0.0.1") == 3
    # ...and a fourth is closed at once.
    assert await closed_at_once(gateway)
    # One of them finishes its request: its place is free again.
    reader, writer = held.pop()
    writer.write(
        b".0.0.1\r\n" + HEAD.split(b"\r\n", 2)[2] + b"Content-Length: %d\r\n\r\n" % len(BODY)
    )
    writer.write(BODY)
    await writer.drain()
    status, _, _ = await read_answer(reader)
    assert status == 200
    # Its place is taken again by another that never finishes its headers...
    reader_3, writer_3 = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer_3.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127")
    await writer_3.drain()
    held.append((reader_3, writer_3))
    await asyncio.sleep(0.1)
    # ...so a second request on the kept-alive connection whose body comes slowly counts too,
    # and is one too many.
    writer.write(HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:5])
    await writer.drain()
    status, _, body = await read_answer(reader)
    assert status == 429 and json.loads(body)["error"]["code"] == "too_many_pending_requests"
    writer.close()
    for _, other in held:
        other.close()
    for _ in range(50):
        if gateway.process.pending.count("127.0.0.1") == 0:
            break
        await asyncio.sleep(0.02)
    assert gateway.process.pending.count("127.0.0.1") == 0
    # With nothing held, requests are served as ever.
    status, _, _ = await exchange(gateway, HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
    assert status == 200


@pytest.mark.parametrize("after_output", [True, False])
async def test_a_client_gone_while_its_answer_is_written_is_not_logged_as_an_error(
    after_output: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """On uvloop (what `gateway serve` runs), a write can meet a transport already closing
    before aiohttp has seen the connection lost, so the handler raises ConnectionResetError
    instead of being cancelled; aiohttp logged a traceback for each ("Error handling
    request"), a few per load test's end. The client's leaving is recorded by the middleware
    (499); the server only closes the connection."""

    async def leaving(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        if after_output:
            await response.prepare(request)
            await response.write(b"data: {}\n\n")
        raise ClientConnectionResetError("Cannot write to closing transport")

    app = web.Application()
    app.router.add_post("/stream", leaving)
    runner = GatewayAppRunner(app, PendingClients(lambda: 0))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /stream HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        received = await asyncio.wait_for(reader.read(), 5)  # read to EOF: it was closed
        writer.close()
    finally:
        await runner.cleanup()
    assert (b"data: {}" in received) is after_output
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
