"""The upstream call: one attempt at one model, with every timeout the gateway applies to it.

This is the one place that decides how long an upstream may take:
- `connect`: opening the connection (the pool's connect timeout);
- `total`: the whole call; for a whole answer the pool's own deadline, for a stream its own deadline
  timer (`HTTPEventStream`), counted from the call's start;
- `first_token`: a stream's first data event, bounded here around opening the stream and
  reading up to that event, and never later than `total`;
- `idle`: after that first event, the longest silence between two events (a `stall`): the
  stream's own reschedulable timer (`HTTPEventStream.watch_idle`), armed here.
It is also where a stream asks the upstream for usage (`stream_options.include_usage`), which
the gateway needs for every usage record whether or not the client asked for it.

Handlers never see a timeout: they get an answer, an opened stream, or an `UpstreamFailure`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.providers.base import EventStream, Provider, UpstreamCall
from gateway.providers.chat_events import (
    failure_from_error_event,
    is_data,
    is_error_payload,
    payload,
)

OpenedStream = tuple[EventStream, list[bytes]]  # the stream and its first data events


def stream_deadline(call: UpstreamCall) -> float:
    """The loop time by which a stream starting now must have ended: its model's `total`."""
    return asyncio.get_running_loop().time() + call.timeout.total


def first_event_within(call: UpstreamCall) -> float:
    """A stream's first event must come within `first_token`, and within the whole call's
    `total` too."""
    timeout = call.timeout
    return min(timeout.first_token, timeout.total)


def ask_for_usage(body: dict[str, Any]) -> None:
    """Make a streaming chat body (the call's own copy) ask for the usage chunk, whatever the
    client asked: every usage record needs the upstream's count."""
    options = body.get("stream_options") or {}
    body["stream_options"] = {**options, "include_usage": True}


async def open_stream(provider: Provider, call: UpstreamCall) -> OpenedStream:
    """Open a chat stream and read up to its first data event, within `first_event_within`.
    Everything that fails here fails before the client has seen any of it, so routing may
    still retry or fall back."""
    ask_for_usage(call.body)
    return await open_events(provider.chat_stream, provider, call, _chat_first_failure)


async def open_completions_stream(provider: Provider, call: UpstreamCall) -> OpenedStream:
    """`open_stream` for a legacy Completions stream sent as the client wrote it: its chunks
    carry usage and errors as chat chunks do."""
    ask_for_usage(call.body)
    return await open_events(provider.completions_stream, provider, call, _chat_first_failure)


FirstFailure = Callable[[bytes, str], UpstreamFailure | None]


def _chat_first_failure(event: bytes, what: str) -> UpstreamFailure | None:
    first = payload(event)
    if first is not None and is_error_payload(first):
        return failure_from_error_event(first, what)
    return None


async def open_events(
    opener: Callable[[UpstreamCall], Awaitable[EventStream]],
    provider: Provider,
    call: UpstreamCall,
    first_failure: FirstFailure,
) -> OpenedStream:
    """Open a stream with `opener` and read up to its first data event, within
    `first_event_within`; `first_failure` says whether that event is an error."""
    what = f"{provider.name}/{call.model_name}"
    within_s = first_event_within(call)
    try:
        async with asyncio.timeout(within_s):
            return await _first_events(opener, call, what, first_failure)
    except TimeoutError as exc:
        raise UpstreamFailure(
            FailureKind.TIMEOUT, f"{what}: no first event within {within_s:g}s"
        ) from exc


async def _first_events(
    opener: Callable[[UpstreamCall], Awaitable[EventStream]],
    call: UpstreamCall,
    what: str,
    first_failure: FirstFailure,
) -> OpenedStream:
    """Leading comments are dropped (the gateway's own keep-alives stand in for them); an
    error event or an empty stream is a failure."""
    stream = await opener(call)
    try:
        while True:
            events = await stream.next_events()
            if events is None:
                raise UpstreamFailure(
                    FailureKind.BAD_RESPONSE, f"{what}: stream ended before any event"
                )
            data_events = [e for e in events if is_data(e)]
            if not data_events:
                continue
            failure = first_failure(data_events[0], what)
            if failure is not None:
                raise failure
            # From here on every silence is bounded by `idle`, the whole stream by `total`.
            stream.watch_idle(call.timeout.idle)
            return stream, data_events
    except BaseException:
        await stream.aclose(completed=False)
        raise
