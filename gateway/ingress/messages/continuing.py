"""Streams that survive on the native Messages path: an `anthropic` upstream's own stream,
relayed byte for byte, that fails in the middle of its text goes on with the next model.

`ContinuingStream` (`pipeline.midstream`) continues chat streams; a native Messages stream is
not one, so this wrapper reads its events instead (which the plain native relay does not: the
cost of `routing.midstream: continue`, as on the chat path), keeping the text sent, the block
indexes used and whether the answer is still plain text. Until a failure the client gets the
upstream's own bytes. On a failure (a reset, a `stall`, an `error` event, an end without
`message_stop`) of a text answer, `ContinuingStream.after` asks the next model through the
chat API, whatever its provider (an Anthropic model by prefill, through the chat translation),
and its chunks are written as the rest of this one message by a `MessagesStreamWriter`
resumed where the native stream stopped: no second `message_start`, the open text block
goes on (or the next index opens), one `message_delta` with both models' usage, one
`message_stop`. A stream with a block that is not text (tool use, thinking) is not continued:
its failure stays the in-band `error` event it was.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import UpstreamFailure
from gateway.ingress.messages.stream import ChatToMessagesStream
from gateway.ingress.messages.stream_from_chat import MessagesStreamWriter
from gateway.pipeline.midstream import BodyFor, ModelCall, NativeContinuation
from gateway.providers.base import EventStream
from gateway.providers.chat_events import payload
from gateway.providers.messages_events import first_event_failure

_NAME = b"event: "


def _name(event: bytes) -> bytes:
    """The `event:` name of an Anthropic event (its first line)."""
    if not event.startswith(_NAME):
        return b""
    end = event.find(b"\n")
    return event[len(_NAME) : end if end >= 0 else None].strip()


class ContinuingMessagesStream(NativeContinuation):
    """A native Messages stream that, failing mid-text, goes on with the next model."""

    def __init__(
        self,
        call: ModelCall,
        model_name: str,
        chat_for: BodyFor,
        inner: EventStream,
        prompt_estimate: int,
        writer: MessagesStreamWriter,
    ) -> None:
        super().__init__(call, model_name, chat_for, inner, prompt_estimate, "message_stop")
        # `_prompt` becomes the upstream's own count once message_start came.
        self._writer = writer  # for the continuation's events, resumed at the failure
        self._next_block = 0
        self._open_text = False

    def first(self, events: list[bytes]) -> list[bytes]:
        out, self._pending = self._read(events)
        return out

    def _read(self, events: list[bytes]) -> tuple[list[bytes], UpstreamFailure | None]:
        """The events to relay (as they came), and the failure an `error` among them means."""
        out: list[bytes] = []
        for event in events:
            name = _name(event)
            if name == b"error":
                failure = first_event_failure(event, self._what())
                if failure is not None:
                    return out, failure
            elif name in _READ:
                self._note(name, event)
            out.append(event)
        return out, None

    def _note(self, name: bytes, event: bytes) -> None:
        data = payload(event)
        try:
            parsed: Any = orjson.loads(data) if data is not None else None
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            return
        if name == b"content_block_delta":
            delta = parsed.get("delta")
            if isinstance(delta, dict) and delta.get("type") == "text_delta":
                text = delta.get("text")
                if isinstance(text, str):
                    self._text.append(text)
            else:
                self._text_only = False
        elif name == b"content_block_start":
            block = parsed.get("content_block")
            if not isinstance(block, dict) or block.get("type") != "text":
                self._text_only = False  # tool use, thinking: not for splicing text into
            index = parsed.get("index")
            if isinstance(index, int):
                self._next_block = max(self._next_block, index + 1)
            self._open_text = True
        elif name == b"content_block_stop":
            self._open_text = False
        elif name == b"message_start":
            message = parsed.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                counts = [usage.get(k) for k in _INPUT_FIELDS]
                self._prompt = sum(c for c in counts if isinstance(c, int))
        elif name == b"message_delta":
            delta = parsed.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                self._finished = True
        elif name == b"message_stop":
            self._finished = True

    async def _continue(self, failure: UpstreamFailure) -> list[bytes]:
        """Go on with the next model as a chat stream written into this message, or raise
        `failure` when this answer cannot be continued."""
        if not self._text_only or self._finished:
            raise failure
        chat = self._chat_after()
        first = await chat.recover(failure)  # closes the failed stream, or raises
        self._writer.resume(self._next_block, text_open=self._open_text)
        continued = ChatToMessagesStream(chat, self._writer)
        self._continued = continued
        return continued.translate(first)


# The events whose content matters for a continuation; the rest (ping) go by unread.
_READ = frozenset(
    {
        b"content_block_delta",
        b"content_block_start",
        b"content_block_stop",
        b"message_start",
        b"message_delta",
        b"message_stop",
    }
)
# Anthropic counts input in three parts; the gateway's `prompt_tokens` is their sum.
_INPUT_FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
