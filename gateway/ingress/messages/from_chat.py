"""An OpenAI `chat.completion` → an Anthropic `Message`. Pure: dict in, dict out.

The client asked the Messages API, so it gets a `Message` exactly as Anthropic documents it:
an `msg_` id, content blocks in the order the model produced them (thinking, text, tool uses),
Anthropic's stop reasons, and Anthropic's usage, where `input_tokens` excludes the tokens read
from the cache (OpenAI's `prompt_tokens` includes them).

The helpers here (ids, stop reasons, usage) are shared with `stream_from_chat`.
"""

from __future__ import annotations

import secrets
import string
from typing import Any

import orjson

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 24  # as long as Anthropic's own ids after the prefix

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def _random_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


def new_message_id() -> str:
    """A new `msg_...` id, shaped like Anthropic's."""
    return _random_id("msg_")


def new_tool_use_id() -> str:
    """A new `toolu_...` id, for an upstream tool call that came without one."""
    return _random_id("toolu_")


def stop_reason(finish_reason: str | None, *, tool_use: bool = False) -> str:
    """Anthropic's `stop_reason` for a chat `finish_reason`. With `tool_use` (the answer has
    tool_use blocks), a plain stop is `tool_use`: some chat servers (Ollama among them) say
    `stop` after tool calls, and Anthropic clients run tools only on `tool_use`."""
    reason = _STOP_REASONS.get(finish_reason or "", "end_turn")
    if tool_use and reason == "end_turn":
        return "tool_use"
    return reason


def stop_fields(choice: dict[str, Any], *, tool_use: bool = False) -> tuple[str, str | None]:
    """`stop_reason` and `stop_sequence` for a chat choice. vLLM says which stop string
    ended the answer (its `stop_reason` field, a string): that is Anthropic's
    `stop_sequence` stop; OpenAI does not say, so its stops are `end_turn`."""
    finish = choice.get("finish_reason")
    finish = finish if isinstance(finish, str) else None
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and matched:
        return "stop_sequence", matched
    return stop_reason(finish, tool_use=tool_use), None


def _count(obj: Any, name: str) -> int:
    value = obj.get(name) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_counts(chat_usage: Any) -> tuple[int, int, int]:
    """(prompt tokens, cached included; completion tokens; cached tokens) of a chat `usage`."""
    details = chat_usage.get("prompt_tokens_details") if isinstance(chat_usage, dict) else None
    return (
        _count(chat_usage, "prompt_tokens"),
        _count(chat_usage, "completion_tokens"),
        _count(details, "cached_tokens"),
    )


def anthropic_usage(prompt: int, completion: int, cached: int) -> dict[str, int]:
    """Anthropic's `usage`: `input_tokens` are the uncached ones, cache reads apart. Chat
    upstreams never report cache writes, so `cache_creation_input_tokens` is 0."""
    return {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": completion,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def reasoning_text(message: dict[str, Any]) -> str:
    """The reasoning a chat message carries: `reasoning_content` (DeepSeek, older vLLM) or
    `reasoning` (newer vLLM, OpenRouter, Ollama); never both, which would repeat it."""
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def content_text(content: Any) -> str:
    """A chat message's `content` as text: a string, or the text of its parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "output_text")
        )
    return ""


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's `arguments` as the `input` object; `{}` when empty or not a JSON object
    (Anthropic's `input` is always an object)."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def tool_use_block(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": call_id if isinstance(call_id, str) and call_id else new_tool_use_id(),
        "name": name if isinstance(name, str) else "",
        "input": tool_input(arguments),
    }


def content_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The `Message` content for a chat message: thinking, then text (a refusal is text
    too), then one tool_use block per tool call, in order."""
    blocks: list[dict[str, Any]] = []
    thinking = reasoning_text(message)
    if thinking:
        blocks.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = content_text(message.get("content")) or content_text(message.get("refusal"))
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            blocks.append(
                tool_use_block(call.get("id"), function.get("name"), function.get("arguments"))
            )
    legacy = message.get("function_call")  # the deprecated `functions` API
    if isinstance(legacy, dict):
        blocks.append(tool_use_block(None, legacy.get("name"), legacy.get("arguments")))
    return blocks


def message_from_chat(
    completion: dict[str, Any], *, model: str, message_id: str | None = None
) -> dict[str, Any]:
    """The Anthropic `Message` for a chat completion. `model` is the name the client asked
    for: Anthropic echoes the request's model, and the client must not learn the upstream's."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    choice = choice if isinstance(choice, dict) else {}
    message = choice.get("message")
    blocks = content_blocks(message if isinstance(message, dict) else {})
    has_tool_use = any(block["type"] == "tool_use" for block in blocks)
    reason, sequence = stop_fields(choice, tool_use=has_tool_use)
    refused = isinstance(message, dict) and bool(content_text(message.get("refusal")))
    return {
        "id": message_id or new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": "refusal" if refused and not has_tool_use else reason,
        "stop_sequence": sequence,
        "usage": anthropic_usage(*usage_counts(completion.get("usage"))),
    }
