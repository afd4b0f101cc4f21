"""POST /v1/chat/completions, streaming and not."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import InvalidRequest
from gateway.http.answers import json_response
from gateway.http.body import read_json_object
from gateway.http.request import PROCESS, begin
from gateway.http.stream import chat_client, relay_stream
from gateway.ingress.openai_params import invalid_type, require
from gateway.pipeline.context import apply_request_context
from gateway.pipeline.request import admit


def validate_chat(body: dict[str, Any]) -> bool:
    """Check what the gateway itself relies on; everything else is the upstream's to judge.
    Returns whether the client asked for a stream."""
    messages = require(body, "messages")
    if not isinstance(messages, list):
        raise invalid_type("messages", "an array", messages)
    if not messages:
        raise InvalidRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid_type(f"messages[{i}]", "an object", message)
        role = message.get("role")
        if role is None:
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{i}].role'.",
                param=f"messages[{i}].role",
                code="missing_required_parameter",
            )
        if not isinstance(role, str):
            raise invalid_type(f"messages[{i}].role", "a string", role)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid_type("stream", "a boolean", stream)
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise invalid_type(name, "an integer", value)
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        if not isinstance(options, dict):
            raise invalid_type("stream_options", "an object", options)
    return bool(stream)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    runtime, state, principal = begin(request, api_call=True)
    body = await read_json_object(request, runtime.max_body_bytes, runtime.body_timeout_s)
    state.stream = validate_chat(body)
    apply_request_context(state, principal, request.headers, body)
    call = await admit(
        request.app[PROCESS], runtime, state, principal, body.get("model"), body, completion=True
    )
    if not state.stream:
        answer = await call.chat(body)
        return json_response(answer.body)
    return relay_stream(
        state,
        lambda: call.chat_stream(body),
        keepalive_s=runtime.config.server.keepalive_s,
        client=chat_client(body.get("stream_options")),
        drain=request.app[PROCESS].drain,
    )
