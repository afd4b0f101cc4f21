"""OpenAI `chat.completion.chunk`s → Anthropic Messages SSE events. Pure: no I/O.

One `MessagesStreamWriter` per client stream. The caller parses each upstream chunk and hands
it to `feed`, which returns the Anthropic events it completes, ready to send: nothing is held
back except the arguments of a tool call whose name has not arrived yet (a `tool_use` block
cannot start without its name).

Anthropic's stream is a sequence of content blocks, each opened (`content_block_start`),
grown (`content_block_delta`) and closed (`content_block_stop`) before the next one opens,
numbered 0, 1, 2... A chat stream has no blocks, only deltas of three kinds (reasoning, text,
tool call N), so a block is whatever run of deltas of one kind the upstream sends: when the
kind changes, the open block closes and the next one opens. No delta ever names a block that
is not open, the mistake that makes clients fail with "Content block not found".

The usage chunk (`choices: []`) comes after the chunk with `finish_reason`, so the caller
calls `finish` when the upstream stream has ended (`[DONE]`), not at the finish reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from gateway.ingress.messages.from_chat import (
    anthropic_usage,
    content_text,
    new_message_id,
    new_tool_use_id,
    reasoning_text,
    stop_reason,
    usage_counts,
)
from gateway.sse import encode_event

_TEXT = "text"
_THINKING = "thinking"
_TOOL = "tool"


@dataclass(slots=True)
class _ToolCall:
    """One upstream tool call, by its chat index."""

    id: str = ""
    name: str = ""
    pending: str = ""  # arguments that came before the name
    block: int = -1  # its Anthropic block index once started
    closed: bool = False


class MessagesStreamWriter:
    """Translates one chat completion stream into one Anthropic message stream."""

    def __init__(
        self, model: str, *, input_tokens_estimate: int = 0, message_id: str | None = None
    ) -> None:
        self._model = model
        self._estimate = max(0, input_tokens_estimate)
        self.message_id = message_id or new_message_id()
        self._started = False
        self._finished = False
        self._next_block = 0
        self._open_kind: str | None = None
        self._open_tool: _ToolCall | None = None
        self._tools: dict[int | str, _ToolCall] = {}
        self._last_tool_key: int | str | None = None
        self._tool_used = False
        self._finish_reason: str | None = None
        self._matched_stop: str | None = None
        self._refused = False
        self._usage: tuple[int, int, int] | None = None
        self._text: list[str] = []

    # --- state the caller reads -----------------------------------------------------------

    @property
    def usage(self) -> tuple[int, int, int]:
        """(prompt tokens, cached included; completion tokens; cached tokens) as the upstream
        last reported them, in OpenAI's convention (`gateway.providers.base.Usage`'s order);
        zeros until a usage chunk came (see `usage_reported`)."""
        return self._usage or (0, 0, 0)

    @property
    def usage_reported(self) -> bool:
        return self._usage is not None

    @property
    def has_open_tool_call(self) -> bool:
        """Whether a tool call is in the middle of its arguments: a failure now cannot be
        recovered by splicing text in, the client's tool input would be broken."""
        if self._open_kind == _TOOL:
            return True
        return any(call.block < 0 and (call.id or call.pending) for call in self._tools.values())

    @property
    def started(self) -> bool:
        """Whether `message_start` was sent: after it, errors go in-band (`error`)."""
        return self._started

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def text(self) -> str:
        """All the text (not thinking, not tool input) sent so far."""
        return "".join(self._text)

    def resume(self, next_block: int, *, text_open: bool) -> None:
        """Write on from a Messages stream that is not this writer's (a native Anthropic
        stream continued on another model, `ingress.messages.continuing`): its
        `message_start` was sent, `next_block` blocks were started, the last still open when
        `text_open` (its text goes on in that block)."""
        self._started = True
        self._next_block = next_block
        self._open_kind = _TEXT if text_open else None

    # --- events ---------------------------------------------------------------------------

    def start(self) -> bytes:
        """The `message_start` event; empty bytes once it was sent, so it never goes twice."""
        if self._started:
            return b""
        self._started = True
        usage = anthropic_usage(self._estimate, 0, 0)
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return self._event("message_start", {"type": "message_start", "message": message})

    def ping(self) -> bytes:
        """A `ping` event: Anthropic's keep-alive, which clients skip."""
        return self._event("ping", {"type": "ping"})

    def error(self, error_type: str, message: str) -> bytes:
        """The one in-band `error` event that ends a failed stream; nothing follows it."""
        self._finished = True
        return self._event(
            "error", {"type": "error", "error": {"type": error_type, "message": message}}
        )

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """The events for one parsed chat chunk (`message_start` first, when not yet sent)."""
        if self._finished:
            return []
        out = self._start_list()
        self._remember_usage(chunk.get("usage"))
        choice = _first_choice(chunk.get("choices"))
        if choice is None:
            return out
        delta = choice.get("delta")
        if isinstance(delta, dict):
            out.extend(self._delta(delta))
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            self._finish_reason = finish
            matched = choice.get("stop_reason")  # vLLM: the stop string that matched
            self._matched_stop = matched if isinstance(matched, str) and matched else None
        return out

    def finish(self) -> list[bytes]:
        """The events that end the message: the open block's stop, `message_delta` with the
        stop reason and usage, `message_stop`. Empty once finished (or after `error`)."""
        if self._finished:
            return []
        out = self._start_list()
        out.extend(self._close_open())
        self._finished = True
        out.append(self._event("message_delta", self._message_delta()))
        out.append(self._event("message_stop", {"type": "message_stop"}))
        return out

    # --- building blocks ------------------------------------------------------------------

    def _event(self, name: str, payload: dict[str, Any]) -> bytes:
        return encode_event(name, orjson.dumps(payload))

    def _start_list(self) -> list[bytes]:
        start = self.start()
        return [start] if start else []

    def _remember_usage(self, usage: Any) -> None:
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            self._usage = usage_counts(usage)

    def _delta(self, delta: dict[str, Any]) -> list[bytes]:
        """One chat delta, its parts in the order a model produces them."""
        out = self._thinking(reasoning_text(delta))
        text = content_text(delta.get("content"))
        refusal = content_text(delta.get("refusal"))
        if refusal:
            self._refused = True
        out.extend(self._text_delta(text + refusal))
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            for position, call in enumerate(tool_calls):
                if isinstance(call, dict):
                    out.extend(self._tool_fragment(call, position))
        legacy = delta.get("function_call")  # the deprecated `functions` API
        if isinstance(legacy, dict):
            out.extend(self._tool_fragment({"index": "function_call", "function": legacy}, 0))
        return out

    def _open_block(self, kind: str, content_block: dict[str, Any]) -> list[bytes]:
        """Close the open block, then start the next one with the next index."""
        out = self._close_open()
        index = self._next_block
        self._next_block += 1
        self._open_kind = kind
        out.append(
            self._event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": content_block},
            )
        )
        return out

    def _close_open(self) -> list[bytes]:
        if self._open_kind is None:
            return []
        if self._open_tool is not None:
            self._open_tool.closed = True
            self._open_tool = None
        self._open_kind = None
        index = self._next_block - 1
        return [self._event("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _block_delta(self, delta: dict[str, Any]) -> bytes:
        index = self._next_block - 1
        return self._event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )

    def _thinking(self, thinking: str) -> list[bytes]:
        if not thinking:
            return []
        out = []
        if self._open_kind != _THINKING:
            out = self._open_block(_THINKING, {"type": "thinking", "thinking": "", "signature": ""})
        out.append(self._block_delta({"type": "thinking_delta", "thinking": thinking}))
        return out

    def _text_delta(self, text: str) -> list[bytes]:
        if not text:
            return []  # the role chunk's `content: ""` opens nothing
        out = []
        if self._open_kind != _TEXT:
            out = self._open_block(_TEXT, {"type": "text", "text": ""})
        self._text.append(text)
        out.append(self._block_delta({"type": "text_delta", "text": text}))
        return out

    # --- tool calls -----------------------------------------------------------------------

    def _tool_key(self, call: dict[str, Any], position: int) -> int | str:
        """Which tool call a fragment belongs to: its `index`; without one (some servers
        omit it), a new id starts a new call and a fragment without id continues the last."""
        index = call.get("index")
        if isinstance(index, (int, str)) and not isinstance(index, bool):
            return index
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            return f"id:{call_id}"
        if self._last_tool_key is not None:
            return self._last_tool_key
        return position

    def _tool_fragment(self, call: dict[str, Any], position: int) -> list[bytes]:
        key = self._tool_key(call, position)
        self._last_tool_key = key
        state = self._tools.setdefault(key, _ToolCall())
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        call_id, name = call.get("id"), function.get("name")
        if state.block < 0:
            if isinstance(call_id, str) and call_id and not state.id:
                state.id = call_id
            if isinstance(name, str) and name:
                state.name = name
        arguments = function.get("arguments")
        fragment = arguments if isinstance(arguments, str) else ""
        if state.closed:
            # The upstream went back to a call it had left: its block is closed and cannot
            # reopen. No chat server interleaves calls; dropping beats a broken stream.
            return []
        if state.block < 0:
            if not state.name:
                state.pending += fragment
                return []
            fragment, state.pending = state.pending + fragment, ""
            out = self._start_tool(state)
        else:
            out = []
        if fragment:
            out.append(self._block_delta({"type": "input_json_delta", "partial_json": fragment}))
        return out

    def _start_tool(self, state: _ToolCall) -> list[bytes]:
        block = {
            "type": "tool_use",
            "id": state.id or new_tool_use_id(),
            "name": state.name,
            "input": {},
        }
        out = self._open_block(_TOOL, block)
        state.block = self._next_block - 1
        self._open_tool = state
        self._tool_used = True
        return out

    # --- the end --------------------------------------------------------------------------

    def _message_delta(self) -> dict[str, Any]:
        reason = stop_reason(self._finish_reason, tool_use=self._tool_used)
        sequence = None
        if self._finish_reason == "stop" and self._matched_stop is not None:
            reason, sequence = "stop_sequence", self._matched_stop
        elif self._refused and not self._tool_used:
            reason = "refusal"
        usage: dict[str, int] = {"output_tokens": self.usage[1]}
        if self._usage is not None:
            full = anthropic_usage(*self._usage)
            usage["input_tokens"] = full["input_tokens"]
            usage["cache_read_input_tokens"] = full["cache_read_input_tokens"]
        return {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage,
        }


def _first_choice(choices: Any) -> dict[str, Any] | None:
    """Choice 0: a Messages client asked for one answer."""
    if not isinstance(choices, list):
        return None
    for choice in choices:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return None
