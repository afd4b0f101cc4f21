"""Responses API streams, both ways they reach a client.

- From an upstream that speaks the Responses API (`openai` with `responses: true`) the events
  are the upstream's own bytes, relayed unchanged (`NativeResponsesStream` only reads the last
  one, to store the response it carries).
- From any other upstream, `ChatToResponsesStream` wraps the chat stream the pipeline opened and
  turns its chunks into the typed events (`ResponsesStreamWriter`).

Either way the response is stored before its last event is handed on, so a client that has
seen `response.completed` can continue it with `previous_response_id` at once.

`ResponsesClientStream` is what the relay needs to know about such a stream: which events to
read (`responses_events`), and how to end one with an error: an `error` event numbered after
the last event sent, as OpenAI ends a stream that breaks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.http.stream import ClientStream
from gateway.ingress.responses.stream_from_chat import ResponsesStreamWriter
from gateway.pipeline.context import RequestState
from gateway.providers import responses_events
from gateway.providers.base import EventStream, Usage, usage_from_openai
from gateway.providers.chat_events import EventKind, classify, payload
from gateway.sse import encode_event

# Called with the final Response before its last event goes to the client (it stores it).
OnFinal = Callable[[dict[str, Any]], Awaitable[None]]


class ResponsesClientStream(ClientStream):
    def __init__(self, state: RequestState) -> None:
        super().__init__(strip_usage=False)
        self._state = state
        self.needs_look = responses_events.needs_look
        self.classify = responses_events.classify

    def error_event(self, error: GatewayError) -> bytes:
        data = {
            "type": "error",
            "code": error.code or error.type,
            "message": error.message,
            "param": None,
            # Events are numbered from 0 without gaps: this one follows the last sent.
            "sequence_number": self._state.streamed_events,
        }
        return encode_event("error", orjson.dumps(data))


class ChatToResponsesStream(EventStream):
    """A chat stream read as a Responses stream. `response.created` goes out with the first
    upstream chunk, never before, so that a model that fails before its first event can still
    be replaced by the next one."""

    def __init__(
        self,
        inner: EventStream,
        writer: ResponsesStreamWriter,
        on_final: OnFinal,
        *,
        started: bool = False,  # the writer was resumed: the response was created already
    ) -> None:
        self._inner = inner
        self._writer = writer
        self._on_final = on_final
        self._chat_usage: Usage | None = None
        self._started = started
        self._final_handled = False

    async def translate(self, events: list[bytes]) -> list[bytes]:
        writer = self._writer
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.extend(writer.start())
        for event in events:
            verdict = classify(event, strip_usage=False)
            if verdict.kind is EventKind.DONE:
                out.extend(writer.finish())
            elif verdict.kind is EventKind.ERROR:
                out.extend(writer.fail("server_error", _error_message(event)))
            else:
                data = payload(event)
                if data is None:
                    continue  # an upstream comment: the gateway sends its own keep-alives
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(chunk, dict):
                    if isinstance(chunk.get("usage"), dict):
                        self._chat_usage = usage_from_openai(chunk["usage"])
                    out.extend(writer.feed(chunk))
        if writer.finished and not self._final_handled:
            self._final_handled = True
            await self._on_final(writer.response)
        return out

    async def next_events(self) -> list[bytes] | None:
        while True:
            events = await self._inner.next_events()
            if events is None:
                return None  # the end; without [DONE] first, the relay reports the cut
            if self._writer.finished:
                continue  # read to its end, so that the connection is reusable
            out = await self.translate(events)
            if out:
                return out

    def exact_usage(self) -> Usage | None:
        # The chat usage itself: the client's API has no field for its reasoning tokens,
        # nor (from an Anthropic upstream) for cache writes, which the inner stream knows.
        return self._inner.exact_usage() or self._chat_usage

    async def aclose(self, *, completed: bool) -> None:
        await self._inner.aclose(completed=completed)


class NativeResponsesStream(EventStream):
    """An upstream's own Responses stream, relayed as it is; its final Response is handed to
    `on_final` before the event carrying it goes on. With `previous_id` (the gateway replayed
    the earlier turns, so the upstream was not given the id), the events carrying the Response
    get it back."""

    def __init__(
        self, inner: EventStream, on_final: OnFinal, previous_id: str | None = None
    ) -> None:
        self._inner = inner
        self._on_final = on_final
        self._final_handled = False
        self._previous_id = previous_id

    async def look(self, events: list[bytes]) -> list[bytes]:
        if self._previous_id is not None:
            previous_id = self._previous_id
            events = [
                responses_events.with_previous_response_id(event, previous_id) for event in events
            ]
        if not self._final_handled:
            for event in events:
                response = responses_events.final_response(event)
                if response is not None:
                    self._final_handled = True
                    await self._on_final(response)
                    break
        return events

    async def next_events(self) -> list[bytes] | None:
        events = await self._inner.next_events()
        return None if events is None else await self.look(events)

    async def next_events_raw(self) -> list[bytes] | None:
        """The upstream's next events, not yet looked at (`look` them before relaying)."""
        return await self._inner.next_events()

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
