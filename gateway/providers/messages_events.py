"""What each event of an Anthropic Messages stream is: the counterpart of `chat_events` for a
stream that already speaks Anthropic's API (translated from chat by the Messages ingress, or,
later, an Anthropic upstream's own).

Usage arrives in two halves, the input side in `message_start` and the output side (and, from
a translated stream, the exact input side) in `message_delta`, so the reader keeps the usage
merged so far: one reader per stream.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import UpstreamFailure
from gateway.providers.anthropic_response import (
    failure_from_error_object,
    usage_of,
)
from gateway.providers.base import Provider, UpstreamCall
from gateway.providers.chat_events import CONTENT, DONE, EventKind, EventVerdict, payload
from gateway.providers.upstream import OpenedStream, open_events

_START = b"event: message_start"
_DELTA = b"event: message_delta"
_STOP = b"event: message_stop"
_ERROR = b"event: error"


class MessagesEventReader:
    """Classifies one stream's events; only usage, the end and errors are parsed."""

    __slots__ = ("_usage",)

    def __init__(self) -> None:
        self._usage: dict[str, Any] = {}  # Anthropic's usage fields, merged as they come

    def classify(self, event: bytes) -> EventVerdict:
        if event.startswith(_STOP):
            return DONE
        if event.startswith(_START) or event.startswith(_DELTA):
            parsed = _parsed(event)
            if parsed is None:
                return CONTENT
            holder = parsed.get("message") if event.startswith(_START) else parsed
            usage = holder.get("usage") if isinstance(holder, dict) else None
            if not isinstance(usage, dict):
                return CONTENT
            self._usage.update(usage)
            return EventVerdict(EventKind.USAGE, usage=usage_of(self._usage))
        if event.startswith(_ERROR):
            data = payload(event) or b""
            return EventVerdict(EventKind.ERROR, error=data.decode("utf-8", "replace")[:500])
        return CONTENT


async def open_messages_stream(provider: Provider, call: UpstreamCall) -> OpenedStream:
    """`upstream.open_stream` for an Anthropic Messages stream, sent as the client wrote it
    (Anthropic streams always carry their usage: nothing to ask for)."""
    return await open_events(provider.messages_stream, provider, call, first_event_failure)


def first_event_failure(event: bytes, what: str) -> UpstreamFailure | None:
    """An `error` event as a stream's first event: a failure routing may still fall back on,
    classified by its error type (overloaded: 5xx, rate limited: 429, ...)."""
    if not event.startswith(_ERROR):
        return None
    data = payload(event) or b""
    parsed = _parsed(event)
    return failure_from_error_object(data, parsed.get("error") if parsed else None, what)


def _parsed(event: bytes) -> dict[str, Any] | None:
    data = payload(event)
    if data is None:
        return None
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None
