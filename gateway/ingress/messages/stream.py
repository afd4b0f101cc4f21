"""Anthropic Messages streams, both ways they reach a client.

- From an `anthropic` upstream the events are the upstream's own bytes (`event:` and `data:`
  lines), relayed unchanged.
- From any other upstream, `ChatToMessagesStream` wraps the chat stream the pipeline opened and
  turns its `chat.completion.chunk`s into Anthropic's events (`MessagesStreamWriter`), so that
  below the relay every stream this ingress relays already speaks the client's API.

`MessagesClientStream` is what the relay needs to know about such a stream: which events to
read (usage in `message_start` / `message_delta`, `message_stop`, `error`), how to keep a slow
stream alive (`ping`), and how to end one with an error (one `event: error`).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.http.stream import ClientStream
from gateway.ingress.messages.errors import error_object
from gateway.ingress.messages.stream_from_chat import MessagesStreamWriter
from gateway.providers.base import EventStream, Usage, usage_from_openai
from gateway.providers.chat_events import EventKind, classify, payload
from gateway.providers.messages_events import MessagesEventReader
from gateway.sse import encode_event

PING = encode_event("ping", b'{"type": "ping"}')
_CONTENT_DELTA = b"event: content_block_delta"


def _needs_look(event: bytes) -> bool:
    # Content deltas are nearly every event of a stream: relayed without being parsed.
    return not event.startswith(_CONTENT_DELTA)


def error_event(status: int, message: str) -> bytes:
    return encode_event("error", orjson.dumps(error_object(status, message)))


class MessagesClientStream(ClientStream):
    keepalive = PING

    def __init__(self) -> None:
        super().__init__(strip_usage=False)
        self._reader = MessagesEventReader()
        self.needs_look = _needs_look
        self.classify = self._reader.classify

    def error_event(self, error: GatewayError) -> bytes:
        return error_event(error.status, error.message)


class ChatToMessagesStream(EventStream):
    """A chat stream read as an Anthropic Messages stream. `message_start` goes out with the
    first upstream chunk, never before, so that a model that fails before its first event can
    still be replaced by the next one."""

    def __init__(self, inner: EventStream, writer: MessagesStreamWriter) -> None:
        self._inner = inner
        self._writer = writer
        self._chat_usage: Usage | None = None

    def translate(self, events: list[bytes]) -> list[bytes]:
        writer = self._writer
        out: list[bytes] = []
        for event in events:
            verdict = classify(event, strip_usage=False)
            if verdict.kind is EventKind.DONE:
                out.extend(writer.finish())
            elif verdict.kind is EventKind.ERROR:
                out.append(writer.error("api_error", _error_message(event)))
            else:
                data = payload(event)
                if data is None:
                    continue  # an upstream comment: the gateway sends its own pings
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue  # not a chunk: nothing a Messages client could be given
                if isinstance(chunk, dict):
                    if isinstance(chunk.get("usage"), dict):
                        self._chat_usage = usage_from_openai(chunk["usage"])
                    out.extend(writer.feed(chunk))
        return out

    async def next_events(self) -> list[bytes] | None:
        while True:
            events = await self._inner.next_events()
            if events is None:
                return None  # the end; without [DONE] first, the relay reports the cut
            if self._writer.finished:
                # After message_stop (or an error) nothing more goes to the client; the
                # upstream is read to its end so that its connection is reusable.
                continue
            out = self.translate(events)
            if out:
                return out

    def exact_usage(self) -> Usage | None:
        # The chat usage itself: the client's API has no field for its reasoning tokens,
        # nor (from an Anthropic upstream) for cache writes, which the inner stream knows.
        return self._inner.exact_usage() or self._chat_usage

    async def aclose(self, *, completed: bool) -> None:
        await self._inner.aclose(completed=completed)


def _error_message(event: bytes) -> str:
    data = payload(event) or b""
    try:
        error: Any = orjson.loads(data).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return "The upstream model failed in the middle of its answer."
