"""Anthropic Messages SSE events → OpenAI `chat.completion.chunk` SSE events. Pure: no I/O.

`StreamTranslator.feed(event)` takes one raw Anthropic event (`event:` + `data:` lines) and
returns the OpenAI events it completes, as bytes ready to relay. Each Anthropic event is
translated the moment it arrives; nothing is held back.

- `message_start` → the first chunk, `delta: {role: assistant, content: ""}`.
- text deltas → `delta.content`.
- a `tool_use` block → `delta.tool_calls`: the first with id, type, name and `arguments: ""`,
  then the `input_json_delta` fragments as `arguments`. OpenAI numbers tool calls 0, 1, ... in
  the order they come, whatever Anthropic's block index is.
- the json_schema answer tool's input fragments → `delta.content`.
- `message_delta` → the chunk with `finish_reason`; `message_stop` → the usage chunk (when the
  request asked for usage) and `[DONE]`.
- `ping` and unknown event types are dropped; `error` raises `UpstreamFailure`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.providers.anthropic_response import (
    arguments_json,
    completion_id,
    failure_from_error_object,
    finish_reason,
    openai_usage,
    usage_of,
)
from gateway.providers.base import Usage
from gateway.sse import DONE, encode_data, event_data


@dataclass(slots=True)
class _Block:
    kind: str  # "text", "tool", "structured" or "other"
    tool_index: int = -1
    wrote_input: bool = False


class StreamTranslator:
    """Translates one Anthropic stream; one instance per upstream response."""

    def __init__(
        self,
        *,
        model: str | None,
        include_usage: bool,
        structured_tool: str | None = None,
        what: str = "anthropic",
        created: int | None = None,
    ) -> None:
        self._model = model
        self._include_usage = include_usage
        self._structured_tool = structured_tool
        self._what = what
        self._created = int(time.time()) if created is None else created
        self._id = completion_id(None)
        self._blocks: dict[int, _Block] = {}
        self._tool_calls = 0
        self._started = False
        self._finished = False
        self.done = False
        self._start_usage: dict[str, Any] = {}
        self._delta_usage: dict[str, Any] = {}

    @property
    def saw_usage(self) -> bool:
        return bool(self._start_usage or self._delta_usage)

    @property
    def usage(self) -> Usage:
        """The usage counted so far (output tokens as of the last `message_delta`)."""
        return usage_of({**self._start_usage, **self._delta_usage})

    def feed(self, event: bytes) -> list[bytes]:
        """The OpenAI events for one raw Anthropic SSE event."""
        data = event_data(event)
        if data is None or self.done:
            return []
        try:
            parsed = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE, f"{self._what}: stream event is not JSON: {data[:200]!r}"
            ) from exc
        if not isinstance(parsed, dict):
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE, f"{self._what}: stream event is not an object"
            )
        return self.handle(parsed, data)

    def handle(self, event: dict[str, Any], raw: bytes = b"") -> list[bytes]:
        """The OpenAI events for one parsed Anthropic event."""
        kind = event.get("type")
        if kind == "error":
            raise failure_from_error_object(
                raw or orjson.dumps(event), event.get("error"), f"{self._what}: error event"
            )
        if kind == "message_start":
            return self._message_start(event.get("message"))
        if kind == "content_block_start":
            return self._start() + self._block_start(event.get("index"), event.get("content_block"))
        if kind == "content_block_delta":
            return self._start() + self._block_delta(event.get("index"), event.get("delta"))
        if kind == "content_block_stop":
            return self._block_stop(event.get("index"))
        if kind == "message_delta":
            return self._start() + self._message_delta(event)
        if kind == "message_stop":
            return self._message_stop()
        return []  # ping, and event types newer than this code

    def finish(self) -> None:
        """The upstream ended its stream: raise unless it was complete."""
        if not self.done:
            raise UpstreamFailure(
                FailureKind.RESET, f"{self._what}: the stream ended before message_stop"
            )

    # --- chunks ---------------------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            # No `system_fingerprint`: unknown, and OpenAI's schema allows only a string.
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._include_usage:
            chunk["usage"] = None
        return encode_data(orjson.dumps(chunk))

    def _tool_delta(self, index: int, **fields: Any) -> bytes:
        return self._chunk({"tool_calls": [{"index": index, **fields}]})

    # --- events ---------------------------------------------------------------------------

    def _message_start(self, message: Any) -> list[bytes]:
        if isinstance(message, dict):
            if message.get("id"):
                self._id = completion_id(message["id"])
            if message.get("model"):
                self._model = message["model"]
            if isinstance(message.get("usage"), dict):
                self._start_usage = message["usage"]
        return self._start()

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": "", "refusal": None})]

    def _block_start(self, index: Any, block: Any) -> list[bytes]:
        if not isinstance(index, int) or not isinstance(block, dict):
            return []
        kind = block.get("type")
        initial_input = block.get("input")
        if kind == "text":
            self._blocks[index] = _Block("text")
            text = block.get("text")
            return [self._chunk({"content": text})] if text else []
        if kind != "tool_use":
            self._blocks[index] = _Block("other")
            return []
        if self._structured_tool is not None and block.get("name") == self._structured_tool:
            state = self._blocks[index] = _Block("structured")
            if initial_input:
                state.wrote_input = True
                return [self._chunk({"content": arguments_json(initial_input)})]
            return []
        state = self._blocks[index] = _Block("tool", tool_index=self._tool_calls)
        self._tool_calls += 1
        out = [
            self._tool_delta(
                state.tool_index,
                id=block.get("id"),
                type="function",
                function={"name": block.get("name"), "arguments": ""},
            )
        ]
        if initial_input:
            state.wrote_input = True
            out.append(
                self._tool_delta(
                    state.tool_index, function={"arguments": arguments_json(initial_input)}
                )
            )
        return out

    def _block_delta(self, index: Any, delta: Any) -> list[bytes]:
        state = self._blocks.get(index) if isinstance(index, int) else None
        if state is None or not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta" and state.kind == "text":
            text = delta.get("text")
            return [self._chunk({"content": text})] if text else []
        if kind == "input_json_delta":
            fragment = delta.get("partial_json")
            if not fragment:
                return []
            state.wrote_input = True
            if state.kind == "structured":
                return [self._chunk({"content": fragment})]
            if state.kind == "tool":
                return [self._tool_delta(state.tool_index, function={"arguments": fragment})]
        return []  # thinking, signatures, citations: no OpenAI counterpart

    def _block_stop(self, index: Any) -> list[bytes]:
        state = self._blocks.get(index) if isinstance(index, int) else None
        if state is None or state.wrote_input:
            return []
        # A call without arguments still needs parseable JSON on the client's side.
        if state.kind == "tool":
            return [self._tool_delta(state.tool_index, function={"arguments": "{}"})]
        if state.kind == "structured":
            return [self._chunk({"content": "{}"})]
        return []

    def _message_delta(self, event: dict[str, Any]) -> list[bytes]:
        usage = event.get("usage")
        if isinstance(usage, dict):
            # Cumulative counts: the latest replaces what came before, field by field.
            self._delta_usage.update({k: v for k, v in usage.items() if v is not None})
        delta = event.get("delta")
        stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        if stop_reason is None or self._finished:
            return []
        self._finished = True
        finish = finish_reason(stop_reason, tool_calls=self._tool_calls > 0)
        return [self._chunk({}, finish)]

    def _message_stop(self) -> list[bytes]:
        out = self._start()
        if not self._finished:
            self._finished = True
            out.append(self._chunk({}, "stop"))
        if self._include_usage:
            usage = openai_usage({**self._start_usage, **self._delta_usage})
            out.append(
                encode_data(
                    orjson.dumps(
                        {
                            "id": self._id,
                            "object": "chat.completion.chunk",
                            "created": self._created,
                            "model": self._model,
                            "choices": [],
                            "usage": usage,
                        }
                    )
                )
            )
        out.append(DONE)
        self.done = True
        return out
