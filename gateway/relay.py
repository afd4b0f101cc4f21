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

from gateway.context import RequestState
from gateway.errors import GatewayError, UpstreamFailure
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

StreamOpener = Callable[[], Awaitable[EventStream]]


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


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
        "5xx", f"{what}: error event: {error.get('message')}", status=500, upstream_error=error
    )


async def _first_events(open_stream: StreamOpener, what: str) -> tuple[EventStream, list[bytes]]:
    """Open the stream and read up to its first data event. Leading comments are dropped: the
    gateway's own keep-alives stand in for them. An error event or an empty stream here is a
    failure the client has not seen any part of."""
    stream = await open_stream()
    try:
        while True:
            events = await stream.next_events()
            if events is None:
                raise UpstreamFailure("bad_response", f"{what}: stream ended before any event")
            data_events = [e for e in events if _payload(e) is not None]
            if not data_events:
                continue
            first = _payload(data_events[0])
            if first is not None and _ERROR_OBJECT.match(first):
                raise _failure_from_event(first, what)
            return stream, data_events
    except BaseException:
        await stream.aclose(completed=False)
        raise


async def _close_opener(opener: asyncio.Task[tuple[EventStream, list[bytes]]]) -> None:
    """Cancel a pending opener; close a stream it opened that nobody will read."""
    if not opener.done():
        opener.cancel()
    with contextlib.suppress(BaseException):
        stream, _ = await opener
        await stream.aclose(completed=False)


async def relay_stream(
    request: web.Request,
    state: RequestState,
    open_stream: StreamOpener,
    *,
    first_token_s: float,
    keepalive_s: float,
    strip_usage: bool,
    what: str,
) -> web.StreamResponse:
    """Relay one upstream stream to the client. Raises GatewayError only while nothing has been
    sent, so the caller can still answer with a status (or try another model)."""
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + first_token_s
    opener = asyncio.ensure_future(_first_events(open_stream, what))
    handed_over = False
    try:
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise UpstreamFailure(
                    "timeout", f"{what}: no first event within {first_token_s:g}s"
                )
            done, _ = await asyncio.wait({opener}, timeout=min(keepalive_s, remaining))
            if done:
                break
            if deadline - loop.time() <= 0:
                continue
            if not response.prepared:
                await response.prepare(request)
            await response.write(KEEPALIVE)
        stream, first = opener.result()
        handed_over = True
    except UpstreamFailure as failure:
        state.error = failure.message
        if not response.prepared:
            raise failure.to_client_error() from failure
        await _end_with_error(response, failure.to_client_error())
        return response
    finally:
        if not handed_over:
            await _close_opener(opener)

    if not response.prepared:
        await response.prepare(request)
    await _pump(response, state, stream, first, strip_usage)
    return response


async def _pump(
    response: web.StreamResponse,
    state: RequestState,
    stream: EventStream,
    events: list[bytes] | None,
    strip_usage: bool,
) -> None:
    """Write events as they come until the upstream ends, fails or the client leaves."""
    saw_done = False
    completed = False
    try:
        while events is not None:
            out: list[bytes] = []
            for event in events:
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
                if state.first_token_at is None:
                    state.first_token_at = time.perf_counter()
            events = await stream.next_events()
        completed = True
        if not saw_done and state.error is None:
            state.stream_cut = True
            state.error = "upstream ended the stream without [DONE]"
    except UpstreamFailure as failure:
        state.stream_cut = True
        state.error = failure.message
        await _end_with_error(response, failure.to_client_error())
    except (ConnectionResetError, asyncio.CancelledError):
        state.stream_cut = True
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

