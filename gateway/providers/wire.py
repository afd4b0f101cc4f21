"""The gateway's own HTTP/1.1 client for upstream calls: a keep-alive connection pool per
provider, one `asyncio.Protocol` per connection that parses the answer as it arrives, and a
small response object over it.

Why not aiohttp's client: an open upstream stream held about 10.5 KB in aiohttp's objects (a
response parser, a `StreamReader` and its deque, the connection, its protocol and queue, the
request's info, a multidict of headers), most of it for features an upstream call never uses
(cookies, redirects, proxies, multipart, websockets). Here it is one protocol object with
slots, a response with slots and a dict of headers. The gateway only ever POSTs a JSON body
and reads the answer once, front to back, so that is all this does:

- the answer's framing per RFC 9112 (`Content-Length`, `chunked` with extensions and
  trailers, or until the connection closes), interim 1xx answers skipped;
- gzip or deflate bodies decoded (the gateway asks for `identity`; an upstream may not care);
- reading pauses when a reader falls 256 KB behind, so a slow client holds the upstream back
  instead of the gateway's memory;
- connections are reused only when the answer was read to its end, both sides kept the
  connection, and no byte came after it; idle ones close after `KEEPALIVE_S`;
- at most `max_connections` in use per provider; a call past that waits its turn;
- DNS answers kept `DNS_TTL_S` (as aiohttp's connector did), numeric hosts not resolved.

Failures are this module's exceptions; `gateway.providers.http` classifies them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import zlib
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import unquote, urlsplit

KEEPALIVE_S = 30.0  # an idle connection is closed after this long
DNS_TTL_S = 300.0
MAX_HEAD_BYTES = 64 * 1024  # status line and headers of one answer
MAX_LINE_BYTES = 8 * 1024  # a chunk-size line or a trailer line
HIGH_WATER = 256 * 1024  # body bytes waiting for a reader before reading pauses


class WireError(Exception):
    """Something went wrong between the gateway and the upstream."""


class ConnectFailed(WireError):
    def __init__(self, message: str, os_error: OSError | None) -> None:
        super().__init__(message)
        self.os_error = os_error


class ConnectTimedOut(WireError):
    pass


class ConnectionReset(WireError):
    """The connection ended (the upstream closed or reset it, or the gateway closed it)
    before the answer was complete."""


class BadAnswer(WireError):
    """The upstream's bytes are not an HTTP/1.x answer this client can read."""


class AnswerTimedOut(WireError, TimeoutError):
    """The call's `total` passed before its answer was complete."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a POST goes, parsed once per address: the origin a connection is pooled by and
    the request's first lines."""

    origin: tuple[str, str, int]  # scheme, host, port
    host: str
    port: int
    tls: bool
    head: bytes  # b"POST <path> HTTP/1.1\r\nHost: <host>\r\n", plus credentials of the URL


def parse_target(address: str) -> Target:
    """An `http(s)://` address as a `Target`; ValueError for anything else."""
    parts = urlsplit(address)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http:// or https:// URL: {address!r}")
    tls = scheme == "https"
    host = parts.hostname
    port = parts.port or (443 if tls else 80)
    shown = f"[{host}]" if ":" in host else host
    if port != (443 if tls else 80):
        shown = f"{shown}:{port}"
    path = parts.path or "/"
    if any(c.isspace() for c in path) or any(c.isspace() for c in parts.query):
        raise ValueError(f"the URL's path must be percent-encoded: {address!r}")
    if parts.query:
        path = f"{path}?{parts.query}"
    lines = [f"POST {path} HTTP/1.1", f"Host: {shown}"]
    if parts.username is not None:
        user = unquote(parts.username)
        password = unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        lines.append(f"Authorization: Basic {token}")
    head = "".join(f"{line}\r\n" for line in lines)
    check_header_text(head.replace("\r\n", ""), "the URL")
    return Target((scheme, host, port), host, port, tls, head.encode("utf-8"))


def check_header_text(text: str, what: str) -> None:
    """A header name or value must not break the request's lines: a CR, LF or NUL in one
    would let its text forge headers of its own."""
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"{what} contains a line break or NUL")


def header_lines(headers: dict[str, str]) -> bytes:
    """Headers as request lines. Names and values must have passed `check_header_text`."""
    return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("utf-8")


# Parser states.
_IDLE = 0  # no request in flight
_HEAD = 1  # waiting for the answer's status line and headers
_LENGTH = 2  # a body of `Content-Length` bytes
_CHUNK_SIZE = 3  # a chunk-size line
_CHUNK_DATA = 4
_CHUNK_END = 5  # the CRLF after a chunk's data
_TRAILERS = 6  # trailer lines up to the empty one
_UNTIL_CLOSE = 7  # a body that ends with the connection
_DONE = 8  # the answer is complete


class UpstreamResponse:
    """An answer whose head has arrived: status, headers (names lower-cased; a repeated
    header's values joined by ", ") and the body to read. `release()` when done with it
    (the connection goes back to the pool if it can), `close()` to drop the connection."""

    __slots__ = ("_connection", "content_length", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        content_length: int | None,
        connection: Connection,
    ) -> None:
        self.status = status
        self.headers: Mapping[str, str] = headers
        self.content_length = content_length  # as received; None if chunked or encoded
        self._connection: Connection | None = connection

    def forget_headers(self) -> None:
        """Drop the headers once nothing will read them: an open stream would otherwise keep
        an upstream's 15-25 of them (a few KB) for as long as it lasts."""
        self.headers = _NO_HEADERS

    def readany(self) -> Coroutine[Any, Any, bytes]:
        """The body's bytes that have arrived (waiting for some if none has); b"" at its end.
        A plain function handing back the connection's coroutine: no extra layer per read."""
        connection = self._connection
        if connection is None:
            return _closed()
        return connection.read_some()

    async def read(self) -> bytes:
        """The rest of the body."""
        pieces: list[bytes] = []
        while True:
            piece = await self.readany()
            if not piece:
                return b"".join(pieces)
            pieces.append(piece)

    def release(self) -> None:
        """Done with the answer: its connection is reused if the whole answer was read and
        both sides keep it open, otherwise closed."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.finish()

    def close(self) -> None:
        """Drop the connection now: a read in progress fails at once."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abandon()


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


async def _closed() -> bytes:
    raise ConnectionReset("the upstream connection is closed")


class Connection(asyncio.Protocol):
    """One connection to an upstream: writes a request, parses its answer as bytes come, and
    hands body bytes to one reader at a time."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_deadline_timer",
        "_decoder",
        "_error",
        "_keep_alive",
        "_loop",
        "_pool",
        "_remaining",
        "_response",
        "_state",
        "_tail",
        "_transport",
        "_waiter",
        "idle_since",
        "lost",
        "origin",
    )

    def __init__(self, pool: ConnectionPool, origin: tuple[str, str, int]) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.origin = origin
        self._transport: asyncio.Transport | None = None
        self._state = _IDLE
        self._tail = b""  # bytes of a line or head not yet complete
        self._response: UpstreamResponse | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._remaining = 0  # body or chunk bytes still to come
        self._decoder: Any = None  # a zlib decompressor for an encoded body
        self._keep_alive = False
        self._error: WireError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.lost = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._tail:
            data = self._tail + data
            self._tail = b""
        try:
            self._parse(data)
        except BadAnswer as exc:
            self._fail(exc)
            self._drop_transport()

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost says what that meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._keep_alive = False
        if self._state == _UNTIL_CLOSE:
            try:
                self._end_body()
            except BadAnswer as error:
                self._fail(error)
        elif self._state not in (_IDLE, _DONE):
            self._fail(ConnectionReset("the upstream closed the connection mid-answer"))

    # The request

    def send(self, request: bytes, deadline: float | None) -> None:
        """Write a whole request; its answer's head is then awaited with `read_head`."""
        assert self._transport is not None and self._state == _IDLE
        self._state = _HEAD
        self._response = None
        self._error = None
        self._decoder = None
        if deadline is not None:
            self._deadline_timer = self._loop.call_at(deadline, self._timed_out)
        self._transport.write(request)

    async def read_head(self) -> UpstreamResponse:
        while True:
            response = self._response
            if response is not None:
                return response
            if self._error is not None:
                raise self._error.with_traceback(None)
            await self._wait()

    async def read_some(self) -> bytes:
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                if self._buffered > HIGH_WATER and self._transport is not None and not self.lost:
                    self._transport.resume_reading()
                self._buffered = 0
                return data
            if self._error is not None:
                raise self._error.with_traceback(None)
            if self._state == _DONE:
                return b""
            # `_wait` inlined: a stream's reads are the hot path, and an open stream would
            # otherwise hold one more suspended coroutine for as long as it waits.
            waiter = self._loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    def finish(self) -> None:
        """The caller is done with the answer: back to the pool, or closed."""
        reusable = (
            self._state == _DONE
            and self._keep_alive
            and not self.lost
            and self._error is None
            and not self._tail
            and not self._chunks
        )
        self._cancel_deadline()
        if reusable:
            self._state = _IDLE
            self._response = None
        else:
            self._drop_transport()
        self._pool.returned(self, reusable)

    def abandon(self) -> None:
        """Closed by the gateway before the answer's end: a read in progress fails now."""
        self._fail(ConnectionReset("the upstream connection was closed"))
        self._cancel_deadline()
        self._drop_transport()
        self._pool.returned(self, False)

    @property
    def usable(self) -> bool:
        """Idle, open, and nothing came on it since its last answer."""
        return self._keep_alive and not self.lost

    def close_idle(self) -> None:
        self._drop_transport()

    # Internals

    async def _wait(self) -> None:
        waiter = self._loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: WireError) -> None:
        if self._error is None:
            self._error = error
        self._keep_alive = False
        self._wake()

    def _timed_out(self) -> None:
        self._deadline_timer = None
        self._fail(AnswerTimedOut("timed out"))
        self._drop_transport()

    def _cancel_deadline(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def _drop_transport(self) -> None:
        self._keep_alive = False
        transport = self._transport
        if transport is not None and not self.lost:
            transport.abort()

    def _push(self, piece: bytes) -> None:
        decoder = self._decoder
        if decoder is not None:
            try:
                piece = decoder.decompress(piece)
            except zlib.error as exc:
                raise BadAnswer(f"the answer's encoded body is corrupt ({exc})") from exc
            if not piece:
                return
        self._chunks.append(piece)
        before = self._buffered
        self._buffered = before + len(piece)
        if before <= HIGH_WATER < self._buffered and self._transport is not None:
            self._transport.pause_reading()
        self._wake()

    def _end_body(self) -> None:
        decoder = self._decoder
        if decoder is not None:
            try:
                rest = decoder.flush()
            except zlib.error as exc:
                raise BadAnswer(f"the answer's encoded body is corrupt ({exc})") from exc
            if rest:
                self._push(rest)
            self._decoder = None
        self._state = _DONE
        self._cancel_deadline()
        self._wake()

    def _parse(self, data: bytes) -> None:
        """Consume `data` as far as it goes; what is left of an incomplete line or head waits
        in `_tail` for the next bytes."""
        pos = 0
        end_of_data = len(data)
        while pos < end_of_data:
            state = self._state
            if state in (_LENGTH, _CHUNK_DATA):
                take = min(self._remaining, end_of_data - pos)
                self._push(data if take == end_of_data else data[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    if state == _LENGTH:
                        self._end_body()
                    else:
                        self._state = _CHUNK_END
            elif state == _CHUNK_SIZE:
                line_end = _find_end(
                    data, pos, b"\r\n", MAX_LINE_BYTES, "a chunk-size line is too long"
                )
                if line_end < 0:
                    break
                size = _chunk_size(data[pos:line_end])
                pos = line_end + 2
                if size:
                    self._remaining = size
                    self._state = _CHUNK_DATA
                else:
                    self._state = _TRAILERS
            elif state == _CHUNK_END:
                if end_of_data - pos < 2:
                    break
                if data[pos : pos + 2] != b"\r\n":
                    raise BadAnswer("a chunk is longer than its size says")
                pos += 2
                self._state = _CHUNK_SIZE
            elif state == _HEAD:
                head_end = _find_end(
                    data, pos, b"\r\n\r\n", MAX_HEAD_BYTES, "the answer's headers are too large"
                )
                if head_end < 0:
                    break
                self._read_head(data[pos:head_end])
                pos = head_end + 4
            elif state == _TRAILERS:
                line_end = _find_end(
                    data, pos, b"\r\n", MAX_LINE_BYTES, "a trailer line is too long"
                )
                if line_end < 0:
                    break
                empty = line_end == pos
                pos = line_end + 2
                if empty:
                    self._end_body()
            elif state == _UNTIL_CLOSE:
                self._push(data if pos == 0 else data[pos:])
                pos = end_of_data
            else:
                # _IDLE or _DONE: bytes no request asked for. The connection can't be trusted
                # to frame a next answer; an idle one is closed now.
                self._keep_alive = False
                if state == _IDLE:
                    self._drop_transport()
                return
        if pos < end_of_data:
            self._tail = data[pos:]

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        version = status_line[0]
        if (
            len(status_line) < 2
            or version not in (b"HTTP/1.1", b"HTTP/1.0")
            or len(status_line[1]) != 3
            or not status_line[1].isdigit()
        ):
            raise BadAnswer(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(status_line[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or name[:1] in b" \t":
                raise BadAnswer(f"a malformed header line: {line[:80]!r}")
            key = name.decode("latin-1").lower()
            text = value.strip(b" \t").decode("latin-1")
            seen = headers.get(key)
            headers[key] = text if seen is None else f"{seen}, {text}"
        if status < 200:
            if status == 101:
                raise BadAnswer("the upstream switched protocols")
            return  # an interim answer (100, 103): the real one follows
        self._frame(version, status, headers)

    def _frame(self, version: bytes, status: int, headers: dict[str, str]) -> None:
        """How the body is delimited (RFC 9112 section 6.3) and whether the connection may
        carry another request after it."""
        connection = headers.get("connection", "").lower()
        if version == b"HTTP/1.1":
            keep_alive = "close" not in connection
        else:
            keep_alive = "keep-alive" in connection
        content_length: int | None = None
        transfer = headers.get("transfer-encoding")
        if status in (204, 304):
            state = _DONE
        elif transfer is not None:
            if transfer.rsplit(",", 1)[-1].strip().lower() == "chunked":
                state = _CHUNK_SIZE
                # Both framings at once is how requests get smuggled: never reuse it.
                keep_alive = keep_alive and "content-length" not in headers
            else:
                state = _UNTIL_CLOSE
        elif "content-length" in headers:
            content_length = _content_length(headers["content-length"])
            state = _LENGTH if content_length else _DONE
            self._remaining = content_length
        else:
            state = _UNTIL_CLOSE
        if state == _UNTIL_CLOSE:
            keep_alive = False
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            # 32 + 15: zlib reads either a gzip or a zlib header.
            self._decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)
            content_length = None
        elif encoding not in ("", "identity"):
            raise BadAnswer(f"the answer is encoded as {encoding!r}, which the gateway can't read")
        self._keep_alive = keep_alive
        self._response = UpstreamResponse(status, headers, content_length, self)
        self._state = state
        if state == _DONE:
            self._end_body()
        self._wake()


def _find_end(data: bytes, pos: int, terminator: bytes, limit: int, too_long: str) -> int:
    """Where `terminator` starts after `pos`; -1 while it has not arrived yet, which past
    `limit` bytes is the bad answer `too_long` instead of a reason to keep buffering."""
    end = data.find(terminator, pos)
    if end < 0 and len(data) - pos > limit:
        raise BadAnswer(too_long)
    return end


def _chunk_size(line: bytes) -> int:
    digits = line.split(b";", 1)[0].strip(b" \t")
    if not digits or len(digits) > 16:
        raise BadAnswer(f"a malformed chunk-size line: {line[:40]!r}")
    try:
        return int(digits, 16)
    except ValueError:
        raise BadAnswer(f"a malformed chunk-size line: {line[:40]!r}") from None


def _content_length(value: str) -> int:
    # A repeated header ("10, 10") is fine while every copy agrees.
    values = {part.strip() for part in value.split(",")}
    if len(values) != 1:
        raise BadAnswer(f"conflicting Content-Length values: {value!r}")
    (text,) = values
    if not text.isdigit():
        raise BadAnswer(f"a malformed Content-Length: {value!r}")
    return int(text)


_TLS: ssl.SSLContext | None = None


def _tls_context() -> ssl.SSLContext:
    """The system's trust store with certificate and host name checks, made once."""
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


def _numeric_host(host: str) -> int | None:
    """The address family of a literal IP address, None for a name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


class ConnectionPool:
    """Keep-alive connections of one provider: at most `max_connections` in use, idle ones
    reused newest first and closed after `KEEPALIVE_S`."""

    def __init__(self, max_connections: int, keepalive_s: float = KEEPALIVE_S) -> None:
        self._limit = max_connections
        self._keepalive_s = keepalive_s
        self._in_use = 0
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._addresses: dict[tuple[str, int], tuple[float, list[tuple[int, str]]]] = {}
        self.closed = False

    @property
    def in_use(self) -> int:
        return self._in_use

    def idle_count(self) -> int:
        return sum(len(stack) for stack in self._idle.values())

    async def post(
        self,
        target: Target,
        request: bytes,
        *,
        connect_s: float,
        total_s: float | None,
    ) -> UpstreamResponse:
        """Send `request` (the whole POST after `target.head`) and wait for its answer's head.
        `total_s` bounds everything up to the body's end (released or not); without it the
        caller bounds the call itself."""
        loop = asyncio.get_running_loop()
        deadline = None if total_s is None else loop.time() + total_s
        await self._take_slot(deadline)
        connection: Connection | None = None
        try:
            connection = self._idle_connection(target.origin, loop.time())
            if connection is None:
                total_first = False
                if deadline is not None and deadline - loop.time() < connect_s:
                    # Never past the call's own `total`, which then is what timed out.
                    connect_s = max(deadline - loop.time(), 0.0)
                    total_first = True
                connection = await self._connect(target, connect_s, total_first=total_first)
            connection.send(target.head + request, deadline)
            return await connection.read_head()
        except BaseException:
            if connection is None:
                self._give_slot()
            else:
                connection.abandon()
            raise

    def returned(self, connection: Connection, reusable: bool) -> None:
        """A connection's answer is done with: idle for the next call, or gone."""
        if reusable and not self.closed:
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(connection.origin, []).append(connection)
            if self._sweep is None:
                self._sweep = asyncio.get_running_loop().call_later(
                    self._keepalive_s, self._close_stale
                )
        self._give_slot()

    async def close(self) -> None:
        """Close the idle connections; ones in use close when their answers are released."""
        self.closed = True
        for stack in self._idle.values():
            for connection in stack:
                connection.close_idle()
        self._idle.clear()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    async def _take_slot(self, deadline: float | None) -> None:
        if self._in_use < self._limit and not self._waiting:
            self._in_use += 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            if deadline is None:
                await turn
            else:
                async with asyncio.timeout_at(deadline):
                    await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._give_slot()  # handed a slot just as the wait ended: pass it on
            else:
                turn.cancel()
                with contextlib.suppress(ValueError):  # already passed over by _give_slot
                    self._waiting.remove(turn)
            raise

    def _give_slot(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot passes straight to the next in line
                return
        self._in_use -= 1

    def _still_good(self, connection: Connection, now: float) -> bool:
        """An idle connection may carry the next call: open, clean, and idle for less than
        the keep-alive."""
        return connection.usable and now - connection.idle_since < self._keepalive_s

    def _idle_connection(self, origin: tuple[str, str, int], now: float) -> Connection | None:
        stack = self._idle.get(origin)
        while stack:
            connection = stack.pop()
            if not self._still_good(connection, now):
                connection.close_idle()
                continue
            return connection
        return None

    def _close_stale(self) -> None:
        self._sweep = None
        now = asyncio.get_running_loop().time()
        oldest_kept: float | None = None
        for origin, stack in list(self._idle.items()):
            fresh = []
            for connection in stack:
                if not self._still_good(connection, now):
                    connection.close_idle()
                else:
                    fresh.append(connection)
                    if oldest_kept is None or connection.idle_since < oldest_kept:
                        oldest_kept = connection.idle_since
            if fresh:
                self._idle[origin] = fresh
            else:
                del self._idle[origin]
        if oldest_kept is not None:
            due = oldest_kept + self._keepalive_s - now
            self._sweep = asyncio.get_running_loop().call_later(max(due, 0.01), self._close_stale)

    async def _connect(
        self, target: Target, connect_s: float, *, total_first: bool = False
    ) -> Connection:
        loop = asyncio.get_running_loop()
        what = f"{target.host}:{target.port}"
        try:
            async with asyncio.timeout(connect_s):
                addresses = await self._resolve(target.host, target.port)
                last_error: OSError | None = None
                for family, address in addresses:
                    try:
                        _, connection = await loop.create_connection(
                            lambda: Connection(self, target.origin),
                            address,
                            target.port,
                            family=family,
                            ssl=_tls_context() if target.tls else None,
                            server_hostname=target.host if target.tls else None,
                        )
                    except OSError as exc:
                        last_error = exc
                        continue
                    return connection
        except TimeoutError as exc:
            if total_first:
                raise AnswerTimedOut("timed out") from exc
            raise ConnectTimedOut(f"connecting to {what} timed out") from exc
        except OSError as exc:  # name resolution
            raise ConnectFailed(f"cannot connect to {what}: {exc}", exc) from exc
        raise ConnectFailed(f"cannot connect to {what}: {last_error}", last_error)

    async def _resolve(self, host: str, port: int) -> list[tuple[int, str]]:
        family = _numeric_host(host)
        if family is not None:
            return [(family, host)]
        loop = asyncio.get_running_loop()
        now = loop.time()
        known = self._addresses.get((host, port))
        if known is not None and known[0] > now:
            return known[1]
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[tuple[int, str]] = list(
            dict.fromkeys((int(info[0]), str(info[4][0])) for info in infos)
        )
        if not addresses:
            raise OSError(f"no address for {host}")
        self._addresses[(host, port)] = (now + DNS_TTL_S, addresses)
        return addresses
