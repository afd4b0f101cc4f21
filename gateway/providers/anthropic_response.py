"""Anthropic Messages answer → OpenAI `chat.completion`. Pure: dict in, dict out.

Also the pieces the stream translator shares: stop reason → `finish_reason`, usage, and the
classification of an Anthropic error object.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.errors import UpstreamFailure
from gateway.providers.base import Usage
from gateway.providers.http import failure_from_status

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The HTTP status Anthropic pairs with each error type; an `error` event mid-stream carries only
# the type, and is classified as the same answer with that status would be.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def finish_reason(stop_reason: Any, *, tool_calls: bool) -> str:
    """OpenAI's `finish_reason`. A `tool_use` stop without OpenAI tool calls is the forced
    json_schema tool answering: for the client that is a plain `stop`."""
    reason = FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    if reason == "tool_calls" and not tool_calls:
        return "stop"
    return reason


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) else 0


def openai_usage(usage: Any) -> dict[str, Any]:
    """OpenAI's `usage`: prompt tokens count cache reads and cache writes too, as OpenAI's do."""
    usage = usage if isinstance(usage, dict) else {}
    cached = _count(usage, "cache_read_input_tokens")
    prompt = _count(usage, "input_tokens") + cached + _count(usage, "cache_creation_input_tokens")
    completion = _count(usage, "output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def usage_of(usage: Any) -> Usage:
    """The gateway's `Usage` of an Anthropic `usage` object, cache writes included: Anthropic
    bills them apart (1.25x input for the 5-minute cache, 2x for the 1-hour one).
    `cache_creation` splits `cache_creation_input_tokens` by cache lifetime; without it every
    write counts as a 5-minute one."""
    usage = usage if isinstance(usage, dict) else {}
    cached = _count(usage, "cache_read_input_tokens")
    written = _count(usage, "cache_creation_input_tokens")
    by_lifetime = usage.get("cache_creation")
    written_1h = (
        _count(by_lifetime, "ephemeral_1h_input_tokens") if isinstance(by_lifetime, dict) else 0
    )
    prompt = _count(usage, "input_tokens") + cached + written
    return Usage(
        prompt,
        _count(usage, "output_tokens"),
        cached,
        written,
        min(written_1h, written),
    )


def completion_id(message_id: Any) -> str:
    return f"chatcmpl-{message_id}" if message_id else "chatcmpl-anthropic"


def arguments_json(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


def translate_response(
    message: dict[str, Any],
    *,
    structured_tool: str | None = None,
    model: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """The OpenAI `chat.completion` for an Anthropic `message`.

    With a json_schema answer tool, its input becomes the message content and any text the
    model wrote around it is left out, so that the content parses as the schema promised.
    """
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    structured: str | None = None
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            if structured_tool is not None and block.get("name") == structured_tool:
                if structured is None:
                    structured = arguments_json(block.get("input"))
                continue
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": arguments_json(block.get("input")),
                    },
                }
            )
        # thinking, redacted_thinking and server tool blocks have no OpenAI counterpart.

    content: str | None
    if structured is not None:
        content = structured
    elif texts or not tool_calls:
        content = "".join(texts)
    else:
        content = None
    answer_message: dict[str, Any] = {
        "role": "assistant",
        "content": content,
        "refusal": None,
        "annotations": [],
    }
    if tool_calls:
        answer_message["tool_calls"] = tool_calls
    return {
        "id": completion_id(message.get("id")),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": message.get("model") or model,
        "choices": [
            {
                "index": 0,
                "message": answer_message,
                "logprobs": None,
                "finish_reason": finish_reason(
                    message.get("stop_reason"), tool_calls=bool(tool_calls)
                ),
            }
        ],
        "usage": openai_usage(message.get("usage")),
        # No `system_fingerprint`: Anthropic has none, and OpenAI's schema allows only a
        # string there, so an unknown one is left out rather than null.
    }


def failure_from_error_object(payload: bytes, error: Any, what: str) -> UpstreamFailure:
    """An Anthropic `{"type": "error", "error": {...}}` that came without an HTTP error status
    (an `error` event mid-stream, or a 200 carrying one), classified by its error type."""
    kind = error.get("type") if isinstance(error, dict) else None
    status = ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500
    return failure_from_status(status, payload, {}, what)
