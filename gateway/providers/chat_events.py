"""What each event of a chat-completions stream is, decided without side effects.

Every provider hands the gateway OpenAI `chat.completion.chunk` events (see base.py). Nearly all
of them are content deltas, which are relayed as the upstream's bytes without being parsed; only
an event that may carry usage, an error or the end of the stream is looked at closely. The
relay acts on the verdict (records the usage, notes the error, strips a usage-only chunk the
client did not ask for); this module only decides.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import orjson

from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.providers.base import Usage, usage_from_openai
from gateway.sse import event_data

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_ERROR_OBJECT = re.compile(rb'^\s*\{\s*"error"\s*:')
_EMPTY_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


class EventKind(enum.Enum):
    CONTENT = "content"  # a delta, a comment, anything the gateway need not read
    USAGE = "usage"  # a chunk carrying the usage object
    DONE = "done"  # data: [DONE]
    ERROR = "error"  # an in-band {"error": ...} event


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower
class EventVerdict:
    """What an event is, and whether it goes on to the client. Read-only by convention: the
    module's CONTENT and DONE are shared."""

    kind: EventKind
    relay: bool = True
    usage: Usage | None = None  # for USAGE: the counts it carries (None when malformed)
    error: str | None = None  # for ERROR: the event's payload, for the log and usage record


CONTENT = EventVerdict(EventKind.CONTENT)
DONE = EventVerdict(EventKind.DONE)


def may_matter(event: bytes) -> bool:
    """Whether an event may carry usage, an error or the end of the stream. Substring tests
    first, as they are several times cheaper than a regex; a false match only costs the exact
    look. (OpenAI's chunks all carry `"usage":null` once usage is asked for: only an object
    counts.)

    `find`, not `in`: on CPython 3.11 `bytes in bytes` first tries the operand as an integer
    (`5 in b"..."`) and raises and clears a TypeError with a formatted message each time:
    about 1,900 instructions a test, some 38k per stream (callgrind)."""
    return (
        event.find(b"[DONE]") >= 0
        or event.find(b'"error"') >= 0
        or (event.find(b'"usage"') >= 0 and _USAGE_OBJECT.search(event) is not None)
    )


def payload(event: bytes) -> bytes | None:
    """The event's data; the one-line `data: ...` event is sliced without a line split."""
    if event.startswith(b"data: ") and event.endswith(b"\n\n") and event.find(b"\n", 6, -2) < 0:
        return event[6:-2]
    return event_data(event)


def is_data(event: bytes) -> bool:
    """Whether an event has data (a comment or keep-alive has none)."""
    return event.startswith(b"data:") or payload(event) is not None


def classify(event: bytes, *, strip_usage: bool) -> EventVerdict:
    """The verdict on one event. `strip_usage`: the client did not ask for usage (the gateway
    asks upstreams for it always), so a usage-only chunk (no choices) is not relayed."""
    if not may_matter(event):
        return CONTENT
    return classify_looked(event, strip_usage=strip_usage)


def classify_looked(event: bytes, *, strip_usage: bool) -> EventVerdict:
    """`classify` for an event `may_matter` has already picked out (the relay asks it first,
    so as not to ask twice)."""
    data = payload(event)
    if data is None:
        return CONTENT
    if data == b"[DONE]":
        return DONE
    if _USAGE_OBJECT.search(data):
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError:
            return CONTENT  # not JSON: relayed as sent, nothing to read from it
        usage = usage_from_openai(parsed.get("usage")) if isinstance(parsed, dict) else None
        relay = not (strip_usage and _EMPTY_CHOICES.search(data))
        return EventVerdict(EventKind.USAGE, relay=relay, usage=usage)
    if _ERROR_OBJECT.match(data):
        return EventVerdict(EventKind.ERROR, error=data.decode("utf-8", "replace")[:500])
    return CONTENT


def is_error_payload(data: bytes) -> bool:
    return _ERROR_OBJECT.match(data) is not None


def failure_from_error_event(data: bytes, what: str) -> UpstreamFailure:
    """An error event before any content: a failure routing may still retry or fall back on."""
    try:
        error = orjson.loads(data).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    error = error if isinstance(error, dict) else {"message": str(error)}
    return UpstreamFailure(
        FailureKind.SERVER_ERROR,
        f"{what}: error event: {error.get('message')}",
        status=500,
        upstream_error=error,
    )
