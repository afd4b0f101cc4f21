"""HTTP plumbing shared by the providers that call a real upstream: the connection pool, the
one place transport exceptions become `UpstreamFailure`s, and the reading of an upstream's
error answer."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.providers import stream_timers
from gateway.providers.base import Provider, UpstreamCall
from gateway.providers.wire import (
    AnswerTimedOut,
    BadAnswer,
    ConnectFailed,
    ConnectionPool,
    ConnectionReset,
    ConnectTimedOut,
    Target,
    UpstreamResponse,
    check_header_text,
    header_lines,
    parse_target,
)
from gateway.sse import EventSplitter

USER_AGENT = "llm-gateway/0.1"

# Phrases upstreams use when the prompt does not fit the model's context window.
_CONTEXT_LENGTH = re.compile(
    r"context[_ ]length|maximum context|context window|prompt is too long|too many tokens"
    r"|input length|reduce the length",
    re.IGNORECASE,
)


def _classify(exc: BaseException, what: str) -> UpstreamFailure | None:
    if isinstance(exc, UpstreamFailure):
        return None
    if isinstance(exc, ConnectTimedOut):
        return UpstreamFailure(FailureKind.CONNECT, f"{what}: connect timed out")
    if isinstance(exc, AnswerTimedOut | TimeoutError):
        return UpstreamFailure(FailureKind.TIMEOUT, f"{what}: timed out")
    if isinstance(exc, ConnectFailed):
        return UpstreamFailure(FailureKind.CONNECT, f"{what}: cannot connect ({exc.os_error})")
    if isinstance(exc, ConnectionReset):
        return UpstreamFailure(FailureKind.RESET, f"{what}: connection reset by the upstream")
    if isinstance(exc, ConnectionError):
        return UpstreamFailure(FailureKind.RESET, f"{what}: connection error ({exc})")
    if isinstance(exc, BadAnswer):
        return UpstreamFailure(FailureKind.BAD_RESPONSE, f"{what}: {exc}")
    return None


class upstream_errors:
    """Translate transport failures into classified `UpstreamFailure`s. A plain (not async)
    class-based context manager: it wraps every upstream call and read, so it should be
    cheap, and translating an exception needs no awaiting."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        # Returns None: never swallows an exception, only replaces transport ones.
        if exc is not None:
            failure = _classify(exc, self.what)
            if failure is not None:
                raise failure from exc


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """An upstream's answer as a JSON object, or a `bad_response` failure."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, f"{what}: answer is not JSON") from exc
    if not isinstance(parsed, dict):
        raise UpstreamFailure(FailureKind.BAD_RESPONSE, f"{what}: answer is not a JSON object")
    return parsed


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`retry-after-ms`, else `retry-after` in seconds; None when absent or not a number."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def parse_error_body(body: bytes) -> dict[str, Any]:
    """The upstream's error as a dict with at least a `message`, whatever shape it came in."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()[:500]
        return {"message": text or "(empty body)"}
    if isinstance(parsed, dict):
        inner = parsed.get("error")
        if isinstance(inner, dict):
            return inner
        if isinstance(inner, str):
            return {"message": inner}
        if isinstance(parsed.get("message"), str):
            return parsed
    return {"message": str(parsed)[:500]}


def failure_from_status(
    status: int, body: bytes, headers: Mapping[str, str], what: str
) -> UpstreamFailure:
    """Classify an upstream's error answer (`headers` with lower-case names)."""
    error = parse_error_body(body)
    message = f"{what}: HTTP {status}: {error.get('message')}"
    if status == 429:
        kind = FailureKind.RATE_LIMITED
    elif status >= 500:
        kind = FailureKind.SERVER_ERROR
    elif status == 408:
        kind = FailureKind.TIMEOUT
    elif status in (400, 413, 422) and (
        error.get("code") == "context_length_exceeded"
        or _CONTEXT_LENGTH.search(str(error.get("message", "")))
    ):
        kind = FailureKind.CONTEXT_LENGTH
    else:
        kind = FailureKind.CLIENT_ERROR
    return UpstreamFailure(
        kind,
        message,
        status=status,
        upstream_error=error,
        retry_after=retry_after_seconds(headers),
    )


_OWN_TIMEOUTS = (FailureKind.TIMEOUT, FailureKind.STALL)


class HTTPEventStream:
    """Reads an upstream's SSE body chunk by chunk and hands back whole events, until the
    stream ends or its deadline (the model's `total`, counted from the call's start) passes:
    then the upstream connection is closed and the read fails as a timeout.

    Once `watch_idle` is called (after the first event), a read that waits longer than
    `idle_s` for the upstream's next bytes fails as a `stall`, its connection closed. One
    timer per stream for both the deadline and the idle watch, not one for each nor one per
    read: each read only notes when it began, and the timer, when it fires early (bytes came
    meanwhile), is moved to the next due time, never past the deadline. The timer is a place
    in the loop's shared `StreamTimers` (no loop timer handle of its own)."""

    # One per open stream: slots, not a per-instance dict.
    __slots__ = (
        "_clock",
        "_deadline",
        "_due_at",
        "_errors",
        "_expired",
        "_idle_s",
        "_read_since",
        "_response",
        "_splitter",
        "_stalled",
        "_timer_slot",
        "_timers",
    )

    def __init__(
        self, response: UpstreamResponse, what: str, deadline: float | None = None
    ) -> None:
        self._response = response
        response.forget_headers()  # checked by the provider before this; never read again
        self._splitter = EventSplitter()
        self._errors = upstream_errors(what)  # stateless: one per stream, not one per read
        self._expired = False
        self._deadline = deadline
        self._idle_s = 0.0  # 0: not watched (before the first event)
        self._clock = asyncio.get_running_loop().time
        self._read_since = 0.0  # loop time the read in progress began; 0: none in progress
        self._stalled = False
        self._timers = stream_timers.for_running_loop()
        self._timer_slot = 0  # its place in `_timers`; 0: none
        self._due_at = 0.0  # when the timer fires
        if deadline is not None:
            self._set_timer(deadline)

    def _set_timer(self, at: float) -> None:
        deadline = self._deadline
        if deadline is not None and at > deadline:
            at = deadline
        self._due_at = at
        self._timer_slot = self._timers.schedule(self, at)

    def _cancel_timer(self) -> None:
        if self._timer_slot:
            self._timers.cancel(self, self._timer_slot)
            self._timer_slot = 0

    def watch_idle(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._cancel_timer()
        self._set_timer(self._clock() + idle_s)

    def on_timer(self) -> None:
        self._timer_slot = 0  # fired: the slot is gone
        deadline = self._deadline
        if deadline is not None and self._due_at >= deadline:
            self._expired = True
            self._response.close()  # a read in progress fails at once; the upstream stops
            return
        now = self._clock()
        since = self._read_since
        if since and now - since >= self._idle_s:
            self._stalled = True
            self._response.close()  # the read in progress fails at once; the upstream stops
            return
        # Early: bytes came meanwhile, or the gateway is busy writing to its client (not the
        # upstream's silence). Due again one idle period after the read in progress began.
        self._set_timer((since or now) + self._idle_s)

    def _timed_out(self) -> UpstreamFailure:
        what = self._errors.what
        if self._stalled and not self._expired:
            return UpstreamFailure(
                FailureKind.STALL, f"{what}: no stream event for {self._idle_s:g}s (idle timeout)"
            )
        return UpstreamFailure(FailureKind.TIMEOUT, f"{what}: the stream passed its total timeout")

    async def next_raw_events(self) -> list[bytes] | None:
        try:
            with self._errors:
                while True:
                    if self._idle_s:
                        self._read_since = self._clock()
                    chunk = await self._response.readany()
                    self._read_since = 0.0
                    if not chunk:
                        if self._expired or self._stalled:
                            raise self._timed_out()
                        tail = self._splitter.pending()
                        if tail.strip():
                            # A last event without its blank line: still a whole event.
                            return [tail.rstrip(b"\r\n") + b"\n\n"]
                        return None
                    events = self._splitter.feed(chunk)
                    if events:
                        return events
        except UpstreamFailure as failure:
            if (self._expired or self._stalled) and failure.kind not in _OWN_TIMEOUTS:
                raise self._timed_out() from failure
            raise

    async def aclose(self, *, completed: bool) -> None:
        self._cancel_timer()
        if completed:
            self._response.release()
        else:
            self._response.close()


async def read_bounded(response: UpstreamResponse, limit: int, what: str) -> bytes:
    """The body, at most `limit` bytes of it (else UpstreamFailure): one announced as larger
    fails before any of it is read."""
    length = response.content_length
    if length is not None and length > limit:
        raise _too_large(what, limit)
    pieces: list[bytes] = []
    size = 0
    while True:
        piece = await response.readany()
        if not piece:
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        size += len(piece)
        if size > limit:
            raise _too_large(what, limit)
        pieces.append(piece)


def _too_large(what: str, limit: int) -> UpstreamFailure:
    return UpstreamFailure(
        FailureKind.BAD_RESPONSE,
        f"{what}: the answer is larger than server.max_answer_mb ({limit / 2**20:g} MB)",
    )


MAX_ERROR_BODY = 1 << 20  # an error answer is read up to this much: its message is enough


async def read_error_and_raise(response: UpstreamResponse, what: str) -> None:
    """Read an error answer (bounded in time by the call's timeout, in size by
    MAX_ERROR_BODY) and raise it classified."""
    try:
        with upstream_errors(what):
            body = await read_bounded(response, MAX_ERROR_BODY, what)
    except UpstreamFailure:
        body = b""
    raise failure_from_status(response.status, body, response.headers, what)


class HTTPProvider(Provider):
    """A provider reached over HTTP: one connection pool (created on first use, inside the
    running loop), a POST with the model's timeouts, and error answers classified."""

    def __init__(self, name: str, max_connections: int, headers: dict[str, str]) -> None:
        super().__init__(name)
        self._max_connections = max_connections
        base = {
            "User-Agent": USER_AGENT,
            # Answers are relayed as the upstream's bytes: they must not come compressed.
            "Accept-Encoding": "identity",
            "Content-Type": "application/json",
            **headers,
        }
        for header, value in base.items():
            check_header_text(header, f"provider {name}'s header name {header!r}")
            check_header_text(value, f"provider {name}'s header {header}")
        self._json_headers = {**base, "Accept": "application/json"}
        self._stream_headers = {**base, "Accept": "text/event-stream"}
        # The same headers as request lines, written once: most calls add only their id.
        self._json_lines = header_lines(self._json_headers)
        self._stream_lines = header_lines(self._stream_headers)
        self._pool: ConnectionPool | None = None
        self._targets: dict[str, Target] = {}

    def target(self, address: str) -> Target:
        """`address` parsed once, not on every call."""
        target = self._targets.get(address)
        if target is None:
            target = self._targets[address] = parse_target(address)
        return target

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            self._pool = ConnectionPool(self._max_connections)
        return self._pool

    def what(self, call: UpstreamCall) -> str:
        """How logs and errors name this call: provider/model."""
        return f"{self.name}/{call.model_name}"

    def _request(self, call: UpstreamCall, body: bytes, *, stream: bool) -> bytes:
        """The request after its target's first lines: headers, then the body."""
        request_id = call.request_id
        check_header_text(request_id, "the request id")
        if call.headers:
            headers = {**(self._stream_headers if stream else self._json_headers)}
            headers["X-Request-Id"] = request_id
            _forward(headers, call.headers)
            lines = header_lines(headers)
        else:
            lines = (self._stream_lines if stream else self._json_lines) + (
                b"X-Request-Id: %s\r\n" % request_id.encode("utf-8")
            )
        return b"%sContent-Length: %d\r\n\r\n%s" % (lines, len(body), body)

    async def post(
        self, call: UpstreamCall, address: str, body: dict[str, Any], *, stream: bool
    ) -> UpstreamResponse:
        """POST `body`; returns a 2xx response (to be released by the caller), or raises the
        classified failure. A whole answer is bounded by the model's `total` from here to its
        last byte; a stream by its own deadline (`HTTPEventStream`)."""
        what = self.what(call)
        timeout = call.timeout
        with upstream_errors(what):
            response = await self.pool.post(
                self.target(address),
                self._request(call, orjson.dumps(body), stream=stream),
                connect_s=timeout.connect,
                total_s=None if stream else timeout.total,
            )
        if response.status >= 400:
            try:
                await read_error_and_raise(response, what)
            finally:
                response.release()
        return response

    async def read_all(self, response: UpstreamResponse, what: str) -> bytes:
        """The whole body, the response released; past `max_answer_bytes` the attempt fails
        as a bad response instead of holding an answer of any size in memory."""
        try:
            with upstream_errors(what):
                return await read_bounded(response, self.max_answer_bytes, what)
        finally:
            response.release()

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def _forward(headers: dict[str, str], forwarded: Mapping[str, str]) -> None:
    """Add the client's forwarded headers (list-valued ones such as `anthropic-beta`): one the
    provider's config also sets keeps both lists, the config's first."""
    for name, value in forwarded.items():
        own = next((key for key in headers if key.lower() == name.lower()), None)
        if own is None:
            headers[name] = value
        else:
            headers[own] = f"{headers[own]},{value}"


def is_event_stream(response: UpstreamResponse) -> bool:
    return response.headers.get("content-type", "").startswith("text/event-stream")
