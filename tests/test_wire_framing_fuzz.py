"""Property test of the upstream client's answer parser: whatever the framing (Content-Length,
chunked with extensions and trailers, close-delimited, gzip on top) and however TCP splits the
bytes, the body read is the body sent, and the connection is reused exactly when the framing
allows it. Each example is a real loopback server writing the answer in the drawn pieces."""

from __future__ import annotations

import asyncio
import gzip
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.providers.wire import ConnectionPool, parse_target

REQUEST = b"Content-Length: 2\r\n\r\n{}"


def frame(pieces: list[bytes], framing: str, packed: bool, extension: str, trailer: str) -> bytes:
    body = b"".join(pieces)
    headers = ["Content-Type: text/event-stream"]
    if packed:
        body = gzip.compress(body)
        pieces = [body[: len(body) // 2], body[len(body) // 2 :]]
        headers.append("Content-Encoding: gzip")
    if framing == "length":
        headers.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked":
        headers.append("Transfer-Encoding: chunked")
        payload = (
            b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension.encode(), p) for p in pieces if p)
            + b"0\r\n%s\r\n" % trailer.encode()
        )
    else:
        headers.append("Connection: close")
        payload = body
    return (
        "HTTP/1.1 200 OK\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n"
    ).encode() + payload


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


async def exchange(wire: bytes, cuts: list[int], close_after: bool) -> tuple[list[bytes], int]:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                for part in split(wire, cuts):
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(0)
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = ConnectionPool(2)
    bodies = []
    try:
        for _ in range(2):
            response = await pool.post(
                parse_target(f"http://127.0.0.1:{port}/v1/x"), REQUEST, connect_s=2, total_s=5
            )
            bodies.append(await response.read())
            response.release()
            assert pool.in_use == 0
    finally:
        await pool.close()
        server.close()
    return bodies, connections


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=6),
    framing=st.sampled_from(["length", "chunked", "close"]),
    packed=st.booleans(),
    extension=st.sampled_from(["", ";a=1", ';name="v"']),
    trailer=st.sampled_from(["", "X-Checksum: abc\r\n", "A: 1\r\nB: 2\r\n"]),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_any_framing_and_split_reads_the_body_sent(
    pieces: list[bytes], framing: str, packed: bool, extension: str, trailer: str, cuts: list[int]
) -> None:
    wire = frame(pieces, framing, packed, extension, trailer)
    bodies, connections = asyncio.run(exchange(wire, cuts, close_after=framing == "close"))
    assert bodies == [b"".join(pieces)] * 2
    # Kept alive when the framing ends the answer by itself; a new connection each time else.
    assert connections == (2 if framing == "close" else 1)
