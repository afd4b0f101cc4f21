"""Streams that survive on the native legacy Completions path: an upstream's own
`text_completion` stream (`openai` with `completions: true`), relayed as it came, that fails
in the middle of its text goes on with the next model.

The counterpart of `ingress.messages.continuing` for the oldest API: while the native stream
lasts, each chunk is read for its text (one prompt, one choice: anything else is not one text
to splice into, and its failure stays the in-band error it was). On a failure (a reset, a
`stall`, an error event, an end without a finish_reason), `ContinuingStream.after` asks the
next model through the chat API with the prompt as the user turn, and its chunks are written
as `text_completion` chunks with the native stream's own id, created and model, ending with
one finish_reason, one usage chunk adding both models' tokens, one `[DONE]`.
"""

from __future__ import annotations

import orjson

from gateway.errors import UpstreamFailure
from gateway.ingress.completions.stream import ChatToCompletionsStream
from gateway.ingress.completions.translate import CompletionsStreamWriter
from gateway.pipeline.midstream import BodyFor, ModelCall, NativeContinuation
from gateway.providers.base import EventStream
from gateway.providers.chat_events import failure_from_error_event, is_error_payload, payload
from gateway.providers.upstream import OpenedStream


class ContinuingCompletionsStream(NativeContinuation):
    """A native Completions stream that, failing mid-text, goes on with the next model."""

    def __init__(
        self,
        call: ModelCall,
        model_name: str,
        chat_for: BodyFor,
        inner: EventStream,
        prompt_estimate: int,
    ) -> None:
        super().__init__(call, model_name, chat_for, inner, prompt_estimate, "it finished")
        self._identity: tuple[str, int, str] | None = None  # the first chunk's id, created, model

    def first(self, events: list[bytes]) -> list[bytes]:
        out, self._pending = self._read(events)
        return out

    def _read(self, events: list[bytes]) -> tuple[list[bytes], UpstreamFailure | None]:
        out: list[bytes] = []
        for event in events:
            data = payload(event)
            if data is not None:
                if data == b"[DONE]":
                    self._finished = True
                elif is_error_payload(data):
                    return out, failure_from_error_event(data, self._what())
                else:
                    self._note(data)
            out.append(event)
        return out, None

    def _note(self, data: bytes) -> None:
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(chunk, dict):
            return
        if self._identity is None:
            cid, created, model = chunk.get("id"), chunk.get("created"), chunk.get("model")
            if isinstance(cid, str) and isinstance(created, int) and isinstance(model, str):
                self._identity = (cid, created, model)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if choice.get("index", 0) != 0:
                self._text_only = False  # several prompts or choices
            text = choice.get("text")
            if isinstance(text, str):
                self._text.append(text)
            if choice.get("finish_reason") is not None:
                self._finished = True

    async def _continue(self, failure: UpstreamFailure) -> list[bytes]:
        if not self._text_only or self._finished or self._identity is None:
            raise failure
        chat = self._chat_after()
        first = await chat.recover(failure)  # closes the failed stream, or raises
        cid, created, model = self._identity
        writer = CompletionsStreamWriter(model, completion_id=cid, created=created)
        continued = ChatToCompletionsStream(chat, writer, _no_next_prompt, 1, 1)
        self._continued = continued
        return continued.translate(first)


async def _no_next_prompt(_index: int) -> OpenedStream:
    raise AssertionError("a continued Completions stream has one prompt")  # pragma: no cover
