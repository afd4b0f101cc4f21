"""Server-sent events: splitting a byte stream into whole events, and encoding events.

Pure functions and a small buffer class: no I/O. The relay passes upstream events through as
the exact bytes the upstream sent, so the splitter returns raw event bytes (terminator
included) and only callers that must read an event decode its `data`.
"""

from __future__ import annotations

import re

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"

# An event ends at a blank line; SSE allows \n, \r\n and \r line endings.
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\r\n\n|\n\r\n")


class EventSplitter:
    """Accumulates chunks and hands back every event completed so far."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        if (
            not self._buffer
            and chunk.endswith(b"\n\n")
            and chunk.find(b"\n\n") == len(chunk) - 2
            and chunk.find(b"\r") < 0  # not `in`: see gateway.providers.chat_events
        ):
            return [chunk]  # the usual read: exactly one whole event, nothing to slice
        data = self._buffer + chunk if self._buffer else chunk
        events: list[bytes] = []
        start = 0
        # The common case (`\n\n` endings) avoids the regex.
        if data.find(b"\r") < 0:
            while True:
                end = data.find(b"\n\n", start)
                if end < 0:
                    break
                events.append(data[start : end + 2])
                start = end + 2
        else:
            for match in _EVENT_END.finditer(data):
                events.append(data[start : match.end()])
                start = match.end()
        self._buffer = data[start:]
        return events

    def pending(self) -> bytes:
        """Bytes of an event not yet terminated (what is left when the stream ends early)."""
        return self._buffer


def event_data(event: bytes) -> bytes | None:
    """The event's `data` (several data lines joined by newlines); None when it has none,
    as for comments and keep-alives."""
    lines = event.splitlines()
    parts = []
    for line in lines:
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    if not parts:
        return None
    return b"\n".join(parts)


def encode_data(payload: bytes) -> bytes:
    """One `data:` event around JSON bytes (which never contain a raw newline)."""
    return b"data: " + payload + b"\n\n"


def encode_event(name: str, payload: bytes) -> bytes:
    """One named event (`event:` then `data:`), as Anthropic's and the Responses API's
    streams carry them; `payload` is JSON bytes (never a raw newline)."""
    return b"event: " + name.encode("ascii") + b"\ndata: " + payload + b"\n\n"
