"""The gateway's own upstream HTTP/1.1 client (gateway.providers.wire) against raw asyncio
servers on 127.0.0.1 that write exactly the bytes each test scripts: framings, split points,
resets, stalls, garbage, keep-alive and the pool's limits."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.providers import wire
from gateway.providers.wire import (
    HIGH_WATER,
    AnswerTimedOut,
    BadAnswer,
    ConnectFailed,
    ConnectionPool,
    ConnectionReset,
    ConnectTimedOut,
    parse_target,
)
from tests.conftest import free_port

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Script = Callable[[bytes, Writer], Awaitable[None]]

BODY = b'{"ok": true}'


@dataclass
class RawServer:
    """Answers each request with `script(request_bytes, writer)`; counts connections and
    keeps the requests it read."""

    script: Script
    connections: int = 0
    closed: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0
    writers: list[Writer] = field(default_factory=list)
    readers: list[Reader] = field(default_factory=list)

    async def handle(self, reader: Reader, writer: Writer) -> None:
        self.connections += 1
        self.writers.append(writer)
        self.readers.append(reader)
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    break
                self.requests.append(request)
                await self.script(request, writer)
                if writer.is_closing():
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed += 1
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


async def read_request(reader: Reader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Script], Awaitable[RawServer]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> RawServer:
        raw = RawServer(script)
        server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
        raw.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return raw

    yield start
    for server in servers:
        server.close()


async def closed_by_the_client(server: RawServer) -> None:
    """The server's side of its one connection sees the client close it."""
    transport, reader = server.writers[0].transport, server.readers[0]
    for _ in range(100):
        if transport.is_closing() or reader.at_eof():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the client kept the connection open")


def request(body: bytes = b"{}") -> bytes:
    return b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


async def post(pool: ConnectionPool, url: str, **kw: float | None) -> tuple[int, bytes]:
    response = await pool.post(
        parse_target(url),
        request(),
        connect_s=float(kw.get("connect_s") or 2.0),
        total_s=kw.get("total_s", 5.0),
    )
    try:
        return response.status, await response.read()
    finally:
        response.release()


def answer(status: str, headers: list[str], body: bytes = b"") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body


def chunked(*pieces: bytes, trailer: bytes = b"") -> bytes:
    out = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
    return out + b"0\r\n" + trailer + b"\r\n"


async def byte_by_byte(data: bytes, writer: Writer) -> None:
    for i in range(len(data)):
        writer.write(data[i : i + 1])
        await writer.drain()
        await asyncio.sleep(0)


async def test_chunked_answer_split_at_every_byte_is_read_whole_and_reused(serve) -> None:  # type: ignore[no-untyped-def]
    wire = answer("200 OK", ["Transfer-Encoding: chunked"]) + chunked(
        b"data: one\n\n", b"data: two\n\n", trailer=b"X-Trailer: yes\r\n"
    )

    async def script(_: bytes, writer: Writer) -> None:
        await byte_by_byte(wire, writer)

    server = await serve(script)
    pool = ConnectionPool(4)
    for _ in range(3):
        assert await post(pool, server.url) == (200, b"data: one\n\ndata: two\n\n")
    assert server.connections == 1  # one keep-alive connection carried all three
    assert pool.in_use == 0 and pool.idle_count() == 1
    assert server.requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    await pool.close()


async def test_content_length_answer_and_headers(serve) -> None:  # type: ignore[no-untyped-def]
    async def script(_: bytes, writer: Writer) -> None:
        writer.write(
            answer(
                "201 Created",
                [
                    "Content-Length: 12",
                    "X-Multi: a",
                    "x-multi: b",
                    "Content-Type: application/json",
                ],
                BODY,
            )
        )

    server = await serve(script)
    pool = ConnectionPool(4)
    response = await pool.post(parse_target(server.url), request(), connect_s=2, total_s=5)
    assert response.status == 201
    assert response.content_length == 12
    assert response.headers["x-multi"] == "a, b"
    assert response.headers["content-type"] == "application/json"
    assert await response.read() == BODY
    response.release()
    assert await post(pool, server.url) == (201, BODY)
    assert server.connections == 1
    await pool.close()


@pytest.mark.parametrize(
    "headers",
    [
        ["Connection: close", "Content-Length: 12"],  # the upstream closes after it
        [],  # no length: the body ends with the connection
        ["Transfer-Encoding: chunked", "Content-Length: 99"],  # both framings: never reused
    ],
)
async def test_answers_that_end_the_connection_are_not_reused(serve, headers) -> None:  # type: ignore[no-untyped-def]
    body = chunked(BODY) if "Transfer-Encoding: chunked" in headers else BODY

    async def script(_: bytes, writer: Writer) -> None:
        writer.write(answer("200 OK", headers, body))
        await writer.drain()
        if "Transfer-Encoding: chunked" not in headers:
            writer.close()

    server = await serve(script)
    pool = ConnectionPool(4)
    assert await post(pool, server.url) == (200, BODY)
    assert await post(pool, server.url) == (200, BODY)
    assert server.connections == 2
    assert pool.in_use == 0
    await pool.close()


async def test_bytes_after_the_answer_make_the_connection_unusable(serve) -> None:  # type: ignore[no-untyped-def]
    async def script(_: bytes, writer: Writer) -> None:
        writer.write(answer("200 OK", ["Content-Length: 12"], BODY) + b"HTTP/1.1 200 OK\r\n")

    server = await serve(script)
    pool = ConnectionPool(4)
    assert await post(pool, server.url) == (200, BODY)
    assert await post(pool, server.url) == (200, BODY)
    assert server.connections == 2
    await pool.close()


async def test_bytes_on_an_idle_connection_close_it(serve) -> None:  # type: ignore[no-untyped-def]
    async def script(_: bytes, writer: Writer) -> None:
        writer.write(answer("200 OK", ["Content-Length: 12"], BODY))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\n")  # while the connection sits in the pool

    server = await serve(script)
    pool = ConnectionPool(4)
    assert await post(pool, server.url) == (200, BODY)
    await closed_by_the_client(server)
    assert await post(pool, server.url) == (200, BODY)
    assert server.connections == 2
    await pool.close()


async def test_gzip_body_is_decoded_and_interim_answers_skipped(serve) -> None:  # type: ignore[no-untyped-def]
    packed = gzip.compress(b"data: hi\n\n" * 50)

    async def script(_: bytes, writer: Writer) -> None:
        writer.write(answer("103 Early Hints", ["Link: </x>"]))
        writer.write(answer("200 OK", ["Content-Encoding: gzip", f"Content-Length: {len(packed)}"]))
        await byte_by_byte(packed, writer)

    server = await serve(script)
    pool = ConnectionPool(4)
    response = await pool.post(parse_target(server.url), request(), connect_s=2, total_s=5)
    assert response.status == 200
    assert response.content_length is None  # what arrives is not what was announced
    assert await response.read() == b"data: hi\n\n" * 50
    response.release()
    await pool.close()


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", "conflicting Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk-size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", "longer than"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx", "'br'"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope", "corrupt"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000, "too large"),
    ],
)
async def test_garbage_is_a_bad_answer(serve, wire: bytes, message: str) -> None:  # type: ignore[no-untyped-def]
    async def script(_: bytes, writer: Writer) -> None:
        writer.write(wire)

    server = await serve(script)
    pool = ConnectionPool(4)
    with pytest.raises(BadAnswer, match=message):
        await post(pool, server.url)
    assert pool.in_use == 0 and pool.idle_count() == 0
    await pool.close()


@pytest.mark.parametrize(
    "wire",
    [
        b"",  # closed before any byte of the answer
        b"HTTP/1.1 200 OK\r\nContent-Le",  # mid-head
        b'HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{"ok"',  # mid-body
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",  # mid-chunk
    ],
)
async def test_a_connection_closed_mid_answer_is_a_reset(serve, wire: bytes) -> None:  # type: ignore[no-untyped-def]
    async def script(_: bytes, writer: Writer) -> None:
        writer.write(wire)
        await writer.drain()
        writer.close()

    server = await serve(script)
    pool = ConnectionPool(4)
    with pytest.raises(ConnectionReset):
        await post(pool, server.url)
    assert pool.in_use == 0 and pool.idle_count() == 0
    await pool.close()


async def test_total_bounds_a_stalled_body_and_closes_the_connection(serve) -> None:  # type: ignore[no-untyped-def]
    async def script(_: bytes, writer: Writer) -> None:
        writer.write(answer("200 OK", ["Content-Length: 100"], b"{"))
        await asyncio.sleep(10)

    server = await serve(script)
    pool = ConnectionPool(4)
    started = time.monotonic()
    with pytest.raises(AnswerTimedOut):
        await post(pool, server.url, total_s=0.3)
    assert 0.25 < time.monotonic() - started < 2
    assert pool.in_use == 0
    await closed_by_the_client(server)
    await pool.close()


async def test_connect_refused_and_tls_handshake_that_never_ends(serve) -> None:  # type: ignore[no-untyped-def]
    pool = ConnectionPool(4)
    with pytest.raises(ConnectFailed) as refused:
        await post(pool, f"http://127.0.0.1:{free_port()}/v1")
    assert refused.value.os_error is not None

    async def silent(_: bytes, writer: Writer) -> None:
        await asyncio.sleep(10)

    server = await serve(silent)
    started = time.monotonic()
    with pytest.raises(ConnectTimedOut):
        await post(pool, f"https://127.0.0.1:{server.port}/v1", connect_s=0.3, total_s=None)
    assert time.monotonic() - started < 2
    assert pool.in_use == 0
    await pool.close()


async def test_pool_limit_queues_calls_and_frees_every_slot(serve) -> None:  # type: ignore[no-untyped-def]
    release = asyncio.Event()

    async def script(_: bytes, writer: Writer) -> None:
        await release.wait()
        writer.write(answer("200 OK", ["Content-Length: 12"], BODY))

    server = await serve(script)
    pool = ConnectionPool(1)
    first = asyncio.create_task(post(pool, server.url))
    await asyncio.sleep(0.05)
    assert pool.in_use == 1
    # A call past the limit waits its turn; under `total` the wait is bounded by it.
    with pytest.raises(TimeoutError):
        await post(pool, server.url, total_s=0.2)
    second = asyncio.create_task(post(pool, server.url))
    third = asyncio.create_task(post(pool, server.url, total_s=None))
    await asyncio.sleep(0.05)
    third.cancel()  # a waiter that gives up leaves no slot behind
    release.set()
    assert await first == (200, BODY)
    assert await second == (200, BODY)
    with pytest.raises(asyncio.CancelledError):
        await third
    assert pool.in_use == 0
    assert server.connections == 1
    await pool.close()


async def test_cancelled_call_closes_its_connection(serve) -> None:  # type: ignore[no-untyped-def]
    async def script(_: bytes, writer: Writer) -> None:
        await asyncio.sleep(10)

    server = await serve(script)
    pool = ConnectionPool(2)
    call = asyncio.create_task(post(pool, server.url, total_s=None))
    await asyncio.sleep(0.1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert pool.in_use == 0 and pool.idle_count() == 0
    await closed_by_the_client(server)
    await pool.close()


async def test_idle_connections_close_after_the_keepalive(serve) -> None:  # type: ignore[no-untyped-def]
    async def script(_: bytes, writer: Writer) -> None:
        writer.write(answer("200 OK", ["Content-Length: 12"], BODY))

    server = await serve(script)
    pool = ConnectionPool(4, keepalive_s=0.2)
    await post(pool, server.url)
    assert pool.idle_count() == 1
    await asyncio.sleep(0.5)
    assert pool.idle_count() == 0
    assert server.closed == 1
    await pool.close()


async def test_an_idle_connection_the_upstream_closed_is_not_reused(serve) -> None:  # type: ignore[no-untyped-def]
    async def script(_: bytes, writer: Writer) -> None:
        writer.write(answer("200 OK", ["Content-Length: 12"], BODY))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # keep-alive announced, then closed anyway while idle

    server = await serve(script)
    pool = ConnectionPool(4)
    await post(pool, server.url)
    await asyncio.sleep(0.2)
    assert await post(pool, server.url) == (200, BODY)
    assert server.connections == 2
    await pool.close()


async def test_a_reader_that_falls_behind_pauses_the_upstream(serve) -> None:  # type: ignore[no-untyped-def]
    size = 32 * 1024 * 1024
    piece = b"x" * (1024 * 1024)

    async def script(_: bytes, writer: Writer) -> None:
        writer.write(answer("200 OK", [f"Content-Length: {size}"]))
        for _piece in range(size // len(piece)):
            writer.write(piece)
        await writer.drain()

    server = await serve(script)
    pool = ConnectionPool(4)
    response = await pool.post(parse_target(server.url), request(), connect_s=2, total_s=30)
    await asyncio.sleep(0.5)
    # Nothing read yet: the client holds at most a read's worth past the high-water mark,
    # and the rest waits in the upstream's buffers.
    assert server.writers[0].transport.get_write_buffer_size() > 8 * 1024 * 1024
    connection = response._connection
    assert connection is not None
    buffered = sum(len(chunk) for chunk in connection._chunks)
    assert buffered < HIGH_WATER + 1024 * 1024
    received = 0
    while chunk := await response.readany():
        received += len(chunk)
    assert received == size
    response.release()
    await pool.close()


def test_targets_and_header_checks() -> None:
    target = parse_target("https://user:p%40ss@api.example.com/v1/messages?beta=true")
    assert target.origin == ("https", "api.example.com", 443)
    assert target.head.startswith(
        b"POST /v1/messages?beta=true HTTP/1.1\r\nHost: api.example.com\r\n"
    )
    assert b"Authorization: Basic dXNlcjpwQHNz\r\n" in target.head
    assert parse_target("http://[::1]:8000/v1").head.split(b"\r\n")[1] == b"Host: [::1]:8000"
    for bad in ("ftp://x/", "http:///nohost", "http://h/a b"):
        with pytest.raises(ValueError):
            parse_target(bad)
    from gateway.providers.openai import OpenAIProvider, OpenAIProviderConfig

    config = OpenAIProviderConfig.model_validate(
        {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key": "sk-1\r\nX-Evil: 1"}
    )
    with pytest.raises(ValueError, match="line break"):
        OpenAIProvider("up", config)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and its key), made with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """An https upstream answering one SSE event, chunked; and the certificate it uses."""
    cert, key = make_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def handle(reader: Reader, writer: Writer) -> None:
        try:
            while await read_request(reader) is not None:
                headers = ["Content-Type: text/event-stream", "Transfer-Encoding: chunked"]
                writer.write(answer("200 OK", headers) + chunked(b"data: secure\n\n"))
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], cert
    finally:
        server.close()


async def test_https_verifies_the_upstream_certificate(
    tls_server: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, cert = tls_server
    url = f"https://127.0.0.1:{port}/v1/chat/completions"
    # Not in the trust store: the connection is refused, nothing is sent.
    monkeypatch.setattr(wire, "_TLS", None)
    pool = ConnectionPool(2)
    with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
        await post(pool, url)
    assert pool.in_use == 0
    # Trusted (OpenSSL reads SSL_CERT_FILE for its default paths): the stream comes through and
    # its connection is kept.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setattr(wire, "_TLS", None)
    for _ in range(2):
        assert await post(pool, url) == (200, b"data: secure\n\n")
    assert pool.idle_count() == 1
    await pool.close()
    monkeypatch.setattr(wire, "_TLS", None)  # the next user builds it from the real store
