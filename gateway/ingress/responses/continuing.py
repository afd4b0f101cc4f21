"""Streams that survive on the native Responses path: an upstream's own Responses stream
(`openai` with `responses: true`), relayed as it came, that fails in the middle of its text
goes on with the next model.

As for native Messages (`ingress.messages.continuing`), this wrapper reads each event while
the native stream lasts (the cost of `routing.midstream: continue`): the response's id and
creation time, the last `sequence_number`, the output items closed, and the message item
being written with its text. On a failure (a reset, a `stall`, an `error` or
`response.failed` event, an end without `response.completed`) of a text answer,
`ContinuingStream.after` asks the next model through the chat API, and its chunks are written
as the rest of this response by a `ResponsesStreamWriter` resumed where the native stream
stopped: the same response id, the open message item and its part go on, `sequence_number`
continues, and one `response.completed` carries the whole text and both models' usage. That
final response is stored by the gateway (the upstream's own copy of it is the broken one). An
answer with an item that is not a message (a function call, reasoning), or a refusal, is not
continued: its failure stays the in-band error it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.ingress.responses.stream import ChatToResponsesStream, NativeResponsesStream, OnFinal
from gateway.ingress.responses.stream_from_chat import ResponsesStreamWriter
from gateway.pipeline.midstream import BodyFor, ModelCall, NativeContinuation
from gateway.providers.responses_events import ENDED, ERROR, FAILED, event_of


class ContinuingResponsesStream(NativeContinuation):
    """A native Responses stream that, failing mid-text, goes on with the next model."""

    def __init__(
        self,
        call: ModelCall,
        model_name: str,
        chat_for: BodyFor,
        native: NativeResponsesStream,
        prompt_estimate: int,
        writer: ResponsesStreamWriter,
        on_final: OnFinal,
        on_continue: Callable[[], None],
    ) -> None:
        super().__init__(call, model_name, chat_for, native, prompt_estimate, "response.completed")
        self._native = native  # relays (and stores) the upstream's events until a failure
        self._writer = writer
        self._on_final = on_final
        self._on_continue = on_continue  # the turn's response is the gateway's to keep now
        self._response_id: str | None = None
        self._created_at = 0
        self._sequence = 0  # the next sequence_number
        self._items: list[dict[str, Any]] = []  # closed output items
        self._open: tuple[str, int, list[str]] | None = None  # the message being written

    async def first(self, events: list[bytes]) -> list[bytes]:
        out, self._pending = self._read(events)
        return await self._native.look(out)

    def _read(self, events: list[bytes]) -> tuple[list[bytes], UpstreamFailure | None]:
        """The events to relay, and the failure an error event among them means."""
        out: list[bytes] = []
        for event in events:
            found = event_of(event)
            if found is not None:
                kind, data = found
                if kind in (ERROR, FAILED):
                    return out, self._failure(kind, data)
                self._note(kind, data)
            out.append(event)
        return out, None

    def _failure(self, kind: str, data: dict[str, Any]) -> UpstreamFailure:
        error: Any = data
        if kind == FAILED:
            response = data.get("response")
            error = response.get("error") if isinstance(response, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        return UpstreamFailure(
            FailureKind.SERVER_ERROR,
            f"{self._what()}: {message or 'the stream failed'}",
        )

    def _note(self, kind: str, data: dict[str, Any]) -> None:
        number = data.get("sequence_number")
        if isinstance(number, int):
            self._sequence = number + 1
        if kind == "response.output_text.delta":
            delta = data.get("delta")
            if isinstance(delta, str) and self._open is not None and self._open[2]:
                self._open[2][-1] += delta
                self._text.append(delta)
            else:
                self._text_only = False  # text outside a part this reader saw open
        elif kind == "response.created":
            response = data.get("response")
            if isinstance(response, dict):
                rid, created = response.get("id"), response.get("created_at")
                self._response_id = rid if isinstance(rid, str) else None
                self._created_at = created if isinstance(created, int) else 0
        elif kind == "response.output_item.added":
            item = data.get("item")
            index = data.get("output_index")
            if (
                isinstance(item, dict)
                and item.get("type") == "message"
                and isinstance(item.get("id"), str)
                and isinstance(index, int)
            ):
                self._open = (item["id"], index, [])
            else:
                self._text_only = False  # a function call, reasoning: not text to splice
        elif kind == "response.content_part.added":
            part = data.get("part")
            if (
                self._open is None
                or not isinstance(part, dict)
                or part.get("type") != "output_text"
            ):
                self._text_only = False  # a refusal
            else:
                self._open[2].append("")
        elif kind in ("response.output_text.done", "response.content_part.done"):
            # The part is whole: what could follow is not more of it.
            self._text_only = False
        elif kind == "response.output_item.done":
            item = data.get("item")
            if isinstance(item, dict):
                self._items.append(item)
            self._open = None
        elif kind in ENDED:
            self._finished = True

    async def _pull(self) -> list[bytes] | None:
        return await self._native.next_events_raw()

    async def _relay(self, events: list[bytes]) -> list[bytes]:
        return await self._native.look(events)

    async def _continue(self, failure: UpstreamFailure) -> list[bytes]:
        """Go on with the next model as a chat stream written into this response, or raise
        `failure` when it cannot be continued."""
        if (
            not self._text_only
            or self._finished
            or self._response_id is None
            or self._open is None
            or not self._open[2]
        ):
            raise failure
        chat = self._chat_after()
        first = await chat.recover(failure)  # closes the failed stream, or raises
        self._on_continue()
        self._writer.resume(
            response_id=self._response_id,
            created_at=self._created_at,
            sequence=self._sequence,
            items=self._items,
            open_message=self._open,
        )
        continued = ChatToResponsesStream(chat, self._writer, self._on_final, started=True)
        self._continued = continued
        return await continued.translate(first)
