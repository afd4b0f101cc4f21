"""Writing answers to the client: whole JSON bodies, and SSE streams event by event.

A stream is started by waiting for the upstream's first data event before answering, so that a
failure up to then still gets a real HTTP status (and, with routing, a fallback). If the first
event is slow, the answer is committed after `keepalive_s` and `: keep-alive` comments are sent
until it comes. From the first event on, each upstream event is written as the upstream's own
bytes the moment it is complete; only usage and error events are parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from gateway.errors import GatewayError, ServiceUnavailable, UpstreamFailure
from gateway.failures import FailureKind
from gateway.pipeline.context import RequestState
from gateway.pipeline.drain import Drain
from gateway.providers.base import EventStream, usage_from_openai
from gateway.sse import KEEPALIVE, encode_data, event_data

log = logging.getLogger("gateway.relay")

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_ERROR_OBJECT = re.compile(rb'^\s*\{\s*"error"\s*:')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')

SHUTTING_DOWN = ServiceUnavailable(
    "The gateway is shutting down and ended this stream; retry the request.",
    code="shutting_down",
)

StreamOpener = Callable[[], Awaitable[EventStream]]
FirstEvents = tuple[EventStream, list[bytes]]


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _may_matter(event: bytes) -> bool:
    """Whether an event may carry usage, an error or the end of the stream. Only those are
    read; the rest (nearly all: the content deltas) are relayed without even slicing out
    their payload. Substring tests first, as they are several times cheaper than a regex;
    a false match only costs the exact look. (OpenAI's chunks all carry `"usage":null` once
    usage is asked for: only an object counts.)"""
    return (
        b"[DONE]" in event
        or b'"error"' in event
        or (b'"usage"' in event and _USAGE_OBJECT.search(event) is not None)
    )


def _is_data(event: bytes) -> bool:
    """Whether an event has data (a comment or keep-alive has none)."""
    return event.startswith(b"data:") or _payload(event) is not None


def _payload(event: bytes) -> bytes | None:
    if event.startswith(b"data: ") and event.endswith(b"\n\n") and b"\n" not in event[6:-2]:
        return event[6:-2]
    return event_data(event)


def error_event(error: GatewayError) -> bytes:
    return encode_data(error.body_bytes())


def _failure_from_event(payload: bytes, what: str) -> UpstreamFailure:
    try:
        error = orjson.loads(payload).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    error = error if isinstance(error, dict) else {"message": str(error)}
    return UpstreamFailure(
        FailureKind.SERVER_ERROR,
        f"{what}: error event: {error.get('message')}",
        status=500,
        upstream_error=error,
    )


async def first_events(open_stream: StreamOpener, what: str, within_s: float) -> FirstEvents:
    """Open an upstream stream and read up to its first data event, within `within_s` (the
    model's first-token timeout). Everything that fails here fails before the client has
    seen any of it, so routing may still retry or fall back."""
    try:
        async with asyncio.timeout(within_s):
            return await _first_events(open_stream, what)
    except TimeoutError as exc:
        raise UpstreamFailure(
            FailureKind.TIMEOUT, f"{what}: no first event within {within_s:g}s"
        ) from exc


async def _first_events(open_stream: StreamOpener, what: str) -> FirstEvents:
    """Leading comments are dropped (the gateway's own keep-alives stand in for them); an
    error event or an empty stream is a failure."""
    stream = await open_stream()
    try:
        while True:
            events = await stream.next_events()
            if events is None:
                raise UpstreamFailure(
                    FailureKind.BAD_RESPONSE, f"{what}: stream ended before any event"
                )
            data_events = [e for e in events if _is_data(e)]
            if not data_events:
                continue
            first = _payload(data_events[0])
            if first is not None and _ERROR_OBJECT.match(first):
                raise _failure_from_event(first, what)
            return stream, data_events
    except BaseException:
        await stream.aclose(completed=False)
        raise


class _KeepAlives:
    """`: keep-alive` comments while the first event is slow. Nothing happens unless
    `every_s` passes first: then the answer begins (its status can no longer change) and a
    comment goes out every `every_s` until `stop`. A timer, not a task per request, so that
    the common fast stream pays almost nothing for it."""

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        state: RequestState,
        every_s: float,
    ) -> None:
        self._request = request
        self._response = response
        self._state = state
        self._every_s = every_s
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(every_s, self._start)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        if self._stopped.is_set():  # the first event came as the timer fired
            return
        self._state.committed_before_answer = True
        with contextlib.suppress(ConnectionResetError):
            await _begin(self._response, self._request, self._state)
            while not self._stopped.is_set():
                await self._response.write(KEEPALIVE)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), self._every_s)

    async def stop(self) -> None:
        """No more comments. Waits for a write in progress to finish (never cuts one), so
        the answer's next bytes can follow at once."""
        self._timer.cancel()
        self._stopped.set()
        if self._task is not None:
            # A write that failed (the client went away) shows again on the answer's next
            # write, where it is handled; here it must not leave the opened stream unclosed.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)


async def relay_stream(
    request: web.Request,
    state: RequestState,
    start: Callable[[], Awaitable[FirstEvents]],
    *,
    keepalive_s: float,
    strip_usage: bool,
    drain: Drain,
) -> web.StreamResponse:
    """Relay a stream to the client. `start` finds an upstream that gives a first event (with
    retries and fallbacks) and raises GatewayError when none does. Until it returns, nothing
    is sent unless it takes longer than `keepalive_s`: then the answer begins with keep-alive
    comments, and a failure after that can only be reported in-band."""
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    keepalives = _KeepAlives(request, response, state, keepalive_s)
    opened: FirstEvents | None = None
    try:
        try:
            with state.waiting_upstream():
                opened = await start()
        finally:
            await keepalives.stop()
    except GatewayError as error:
        state.error = state.error or error.message
        if not response.prepared:
            raise
        await _end_with_error(response, error)
        return response
    except asyncio.CancelledError:
        if opened is not None:
            # Cancelled while the keep-alives stopped: nobody will read this stream.
            await opened[0].aclose(completed=False)
        if drain.grace_over and response.prepared:
            await _end_with_error(response, SHUTTING_DOWN)
        raise

    stream, first = opened
    if not response.prepared:
        await _begin(response, request, state)
    await _pump(response, state, stream, first, strip_usage, drain)
    return response


async def _begin(response: web.StreamResponse, request: web.Request, state: RequestState) -> None:
    state.stamp(response.headers)
    await response.prepare(request)


async def _pump(
    response: web.StreamResponse,
    state: RequestState,
    stream: EventStream,
    events: list[bytes] | None,
    strip_usage: bool,
    drain: Drain,
) -> None:
    """Write events as they come until the upstream ends, fails or the client leaves."""
    saw_done = False
    completed = False
    waiting = state.waiting_upstream()  # one timer object for the whole stream
    try:
        while events is not None:
            out: list[bytes] = []
            for event in events:
                if not _may_matter(event):
                    out.append(event)  # a content delta or a comment: relayed, unread
                    continue
                payload = _payload(event)
                if payload is not None:
                    if payload == b"[DONE]":
                        saw_done = True
                    elif _USAGE_OBJECT.search(payload):
                        parsed = orjson.loads(payload)
                        state.usage = usage_from_openai(parsed.get("usage")) or state.usage
                        if strip_usage and _EMPTY_CHOICES.search(payload):
                            continue
                    elif _ERROR_OBJECT.match(payload):
                        state.error = payload.decode("utf-8", "replace")[:500]
                out.append(event)
            if out:
                await response.write(out[0] if len(out) == 1 else b"".join(out))
                state.streamed_events += len(out)
                if state.first_token_at is None:
                    state.first_token_at = time.perf_counter()
            with waiting:
                events = await stream.next_events()
        completed = True
        if not saw_done and state.error is None:
            state.stream_cut = True
            state.error = "upstream ended the stream without [DONE]"
    except UpstreamFailure as failure:
        state.stream_cut = True
        state.error = failure.message
        await _end_with_error(response, failure.to_client_error())
    except ConnectionResetError:
        state.stream_cut = True
        state.error = "client disconnected"
        raise
    except asyncio.CancelledError:
        state.stream_cut = True
        if drain.grace_over:
            state.error = "ended by gateway shutdown"
            await _end_with_error(response, SHUTTING_DOWN)
        else:
            state.error = "client disconnected"
        raise
    finally:
        await stream.aclose(completed=completed)
    if completed:
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()


async def _end_with_error(response: web.StreamResponse, error: GatewayError) -> None:
    """The stream has begun: the error goes in-band, and there is no [DONE]."""
    with contextlib.suppress(ConnectionResetError):
        await response.write(error_event(error))
        await response.write_eof()
