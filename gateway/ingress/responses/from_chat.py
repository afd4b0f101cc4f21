"""A Chat Completions answer → a Responses API `response` object. Pure: dict in, dict out.

The object has every field OpenAI's own carries (the spec's required ones and those its
examples always show), so SDKs and code written against OpenAI read it unchanged. Request
settings are echoed back as OpenAI does, with OpenAI's defaults where the request was silent.

The pieces the stream writer shares live here too: ids, the envelope around the output items,
usage, and what a chat `finish_reason` means for a response's status.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

# A chat finish_reason that cut the answer short → the Response's incomplete reason.
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}

# ResponseErrorCode in OpenAI's spec: a failed response carries one of these, nothing else.
ERROR_CODES = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "invalid_prompt",
        "data_residency_mismatch",
        "bio_policy",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)


def new_id(prefix: str) -> str:
    """An id shaped like OpenAI's: `resp_`, `msg_` or `fc_` and 48 hex digits."""
    return f"{prefix}_{secrets.token_hex(24)}"


def response_from_chat(
    completion: dict[str, Any],
    *,
    request: dict[str, Any],
    response_id: str | None = None,
    created_at: int | None = None,
    model: str,
) -> dict[str, Any]:
    """The Response for a non-streamed chat completion (its first choice: Responses has no
    `n`). `request` is the client's Responses request, echoed back; `model` is the name the
    client should see."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    message = message if isinstance(message, dict) else {}
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    output: list[dict[str, Any]] = []
    content = message_content(message.get("content"), message.get("refusal"))
    if content:
        output.append(message_item(new_id("msg"), content, status="completed"))
    for call in message.get("tool_calls") or ():
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            function = call["function"]
            output.append(
                function_call_item(
                    new_id("fc"),
                    call_id=str(call.get("id") or new_id("call")),
                    name=str(function.get("name") or ""),
                    arguments=str(function.get("arguments") or ""),
                    status="completed",
                )
            )
    status, incomplete = finish_status(finish)
    if incomplete is not None and output:
        output[-1]["status"] = "incomplete"  # the item the cut fell in
    created = int(time.time()) if created_at is None else created_at
    return response_object(
        request,
        response_id=response_id or new_id("resp"),
        created_at=created,
        model=model,
        status=status,
        output=output,
        usage=responses_usage(completion.get("usage")),
        incomplete_details=incomplete,
        completed_at=created if status == "completed" else None,
    )


def finish_status(finish_reason: Any) -> tuple[str, dict[str, Any] | None]:
    """`status` and `incomplete_details` for a chat `finish_reason`."""
    reason = INCOMPLETE_REASONS.get(finish_reason) if isinstance(finish_reason, str) else None
    if reason is None:
        return "completed", None
    return "incomplete", {"reason": reason}


def message_content(text: Any, refusal: Any = None) -> list[dict[str, Any]]:
    """An assistant message's content parts: its text, or its refusal."""
    parts: list[dict[str, Any]] = []
    if isinstance(text, str) and text:
        parts.append(output_text_part(text))
    if isinstance(refusal, str) and refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    return parts


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, content: list[dict[str, Any]], *, status: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def function_call_item(
    item_id: str, *, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def _count(obj: Any, name: str) -> int:
    value = obj.get(name) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def responses_usage(chat_usage: Any) -> dict[str, Any]:
    """Chat `usage` in the Responses shape. Missing counts are 0: a finished response always
    carries a usage object on OpenAI, and its details are required fields."""
    prompt_details = chat_usage.get("prompt_tokens_details") if isinstance(chat_usage, dict) else {}
    completion_details = (
        chat_usage.get("completion_tokens_details") if isinstance(chat_usage, dict) else {}
    )
    input_tokens = _count(chat_usage, "prompt_tokens")
    output_tokens = _count(chat_usage, "completion_tokens")
    total = _count(chat_usage, "total_tokens") or input_tokens + output_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": _count(prompt_details, "cached_tokens"),
            "cache_write_tokens": _count(prompt_details, "cache_write_tokens"),
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {
            "reasoning_tokens": _count(completion_details, "reasoning_tokens")
        },
        "total_tokens": total,
    }


def echoed_tools(tools: Any) -> list[dict[str, Any]]:
    """The request's tools as the response lists them: the function tools the model was
    offered (hosted tools never reached it), with the fields the spec requires filled in.
    `strict` is false when the client left it out, since the chat upstream was not asked for
    strict mode."""
    out: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and tool.get("type") == "function":
            out.append(
                {
                    **tool,
                    "description": tool.get("description"),
                    "parameters": tool.get("parameters"),
                    "strict": tool.get("strict") if isinstance(tool.get("strict"), bool) else False,
                }
            )
    return out


def _text_config(text: Any) -> dict[str, Any]:
    config = dict(text) if isinstance(text, dict) else {}
    if not isinstance(config.get("format"), dict):
        config["format"] = {"type": "text"}
    return config


def _reasoning(reasoning: Any) -> dict[str, Any]:
    given = reasoning if isinstance(reasoning, dict) else {}
    return {"effort": given.get("effort"), "summary": given.get("summary")}


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def response_object(
    request: dict[str, Any],
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    incomplete_details: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """The Response envelope in OpenAI's field order, request settings echoed."""
    metadata = request.get("metadata")
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": _or(request.get("parallel_tool_calls"), True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": _reasoning(request.get("reasoning")),
        "store": _or(request.get("store"), True),
        "temperature": _or(request.get("temperature"), 1.0),
        "text": _text_config(request.get("text")),
        "tool_choice": _or(request.get("tool_choice"), "auto"),
        "tools": echoed_tools(request.get("tools")),
        "top_p": _or(request.get("top_p"), 1.0),
        "truncation": "disabled",
        "usage": usage,
        "user": request.get("user"),
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


def output_text(response: dict[str, Any]) -> str:
    """All `output_text` of a response's messages joined, as the SDKs' `output_text` is."""
    texts: list[str] = []
    for item in response.get("output") or ():
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(str(part.get("text", "")))
    return "".join(texts)
