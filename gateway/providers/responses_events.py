"""What each event of a Responses API stream is: the counterpart of `chat_events` for a stream
that already speaks the Responses API (an upstream's own, or translated from chat by the
Responses ingress).

Only the events that end a stream are read: `response.completed` and `response.incomplete`
(the end, with the usage), `response.failed` and `error` (an error). The deltas, nearly every
event, are relayed unread.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.providers.base import Provider, UpstreamCall, usage_from_responses
from gateway.providers.chat_events import CONTENT, EventKind, EventVerdict, payload
from gateway.providers.upstream import OpenedStream, open_events
from gateway.sse import encode_event

ENDED = ("response.completed", "response.incomplete")
FAILED = "response.failed"
ERROR = "error"
_TERMINAL = (*ENDED, FAILED, ERROR)


def needs_look(event: bytes) -> bool:
    """False for a delta (`response.output_text.delta`, `...arguments.delta`, ...): its type
    is in the event's first bytes, whether the stream names its events or not."""
    return event.find(b".delta", 0, 96) < 0  # not `in`: see chat_events.may_matter


def event_of(event: bytes) -> tuple[str, dict[str, Any]] | None:
    """The event's `type` and its data; None for a comment or what is not a JSON object."""
    data = payload(event)
    if data is None:
        return None
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict):
        return None
    kind = parsed.get("type")
    return (kind if isinstance(kind, str) else ""), parsed


def final_response(event: bytes) -> dict[str, Any] | None:
    """The Response a terminal event (`response.completed`, `.incomplete`, `.failed`)
    carries; None for any other event."""
    if not (  # `find`, not `in`: see chat_events.may_matter
        event.find(b"response.completed", 0, 96) >= 0
        or event.find(b"response.incomplete", 0, 96) >= 0
        or event.find(b"response.failed", 0, 96) >= 0
    ):
        return None  # a delta or another event: not parsed
    found = event_of(event)
    if found is None or found[0] not in (*ENDED, FAILED):
        return None
    response = found[1].get("response")
    return response if isinstance(response, dict) else None


# The events whose data carries the whole Response object (the rest carry a part of it).
_WITH_RESPONSE = (b"response.created", b"response.in_progress", b"response.queued")


def with_previous_response_id(event: bytes, previous_id: str) -> bytes:
    """The event with `response.previous_response_id` set, for the events that carry the
    Response; any other event as it is. Only used when the gateway replayed the earlier turns
    to an upstream that never saw them, so that the client still sees the id it continued."""
    head = event[:96]
    if not any(name in head for name in _WITH_RESPONSE) and final_response(event) is None:
        return event
    found = event_of(event)
    if found is None or not isinstance(found[1].get("response"), dict):
        return event
    kind, data = found
    data["response"]["previous_response_id"] = previous_id
    return encode_event(kind, orjson.dumps(data))


def classify(event: bytes) -> EventVerdict:
    found = event_of(event)
    if found is None or found[0] not in _TERMINAL:
        return CONTENT
    kind, data = found
    response = data.get("response")
    usage = usage_from_responses(response.get("usage")) if isinstance(response, dict) else None
    if kind in ENDED:
        return EventVerdict(EventKind.DONE, usage=usage)
    return EventVerdict(EventKind.ERROR, usage=usage, error=_error_text(kind, data))


def _error_text(kind: str, data: dict[str, Any]) -> str:
    if kind == FAILED:
        response = data.get("response")
        error = response.get("error") if isinstance(response, dict) else None
    else:
        error = data
    if isinstance(error, dict):
        return f"{error.get('code')}: {error.get('message')}"[:500]
    return kind


async def open_responses_stream(provider: Provider, call: UpstreamCall) -> OpenedStream:
    """`upstream.open_stream` for a Responses stream sent as the client wrote it (its last
    event always carries the usage: nothing to ask for)."""
    return await open_events(provider.responses_stream, provider, call, first_event_failure)


def first_event_failure(event: bytes, what: str) -> UpstreamFailure | None:
    """An `error` or `response.failed` event as a stream's first event: a failure routing may
    still fall back on."""
    found = event_of(event)
    if found is None or found[0] not in (FAILED, ERROR):
        return None
    kind, data = found
    if kind == FAILED:
        response = data.get("response")
        error = response.get("error") if isinstance(response, dict) else None
    else:
        error = data
    error = error if isinstance(error, dict) else {"message": str(error)}
    rate_limited = error.get("code") == "rate_limit_exceeded"
    return UpstreamFailure(
        FailureKind.RATE_LIMITED if rate_limited else FailureKind.SERVER_ERROR,
        f"{what}: {kind} event: {error.get('message')}",
        status=429 if rate_limited else 500,
        upstream_error={
            "message": str(error.get("message")),
            "type": "rate_limit_error" if rate_limited else "server_error",
            "param": None,
            "code": error.get("code"),
        },
    )
