"""POST /v1/chat/completions, streaming and not."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import InvalidRequest
from gateway.http.request import (
    PROCESS,
    admit,
    begin,
    invalid_type,
    read_json_object,
    require,
)
from gateway.http.stream import FirstEvents, first_events, json_response, relay_stream
from gateway.pipeline.context import apply_request_context
from gateway.providers.base import JsonAnswer, UpstreamCall


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
    runtime, state = begin(request, api_call=True)
    body = await read_json_object(request, runtime.max_body_bytes)
    state.stream = validate_chat(body)
    apply_request_context(state, request.headers, body)
    assert state.principal is not None
    route = runtime.router.resolve(body.get("model"), state.principal)
    attempts = await admit(request, runtime, state, route, body, completion=True)

    def call_for(model_name: str) -> UpstreamCall:
        upstream_body = {**body, "model": runtime.config.upstream_id(model_name)}
        if state.stream:
            # Always ask for usage; the relay hides the usage-only chunk again from a client
            # that did not ask for it.
            options = body.get("stream_options") or {}
            upstream_body["stream_options"] = {**options, "include_usage": True}
        return UpstreamCall(
            model_name, runtime.config.models[model_name], upstream_body, state.request_id
        )

    if not state.stream:

        async def answer_from(model_name: str) -> JsonAnswer:
            with state.waiting_upstream():
                return await runtime.provider_for(model_name).chat(call_for(model_name))

        answer = await attempts.run(answer_from)
        state.usage = answer.usage
        return json_response(answer.body)

    async def first_events_from(model_name: str) -> FirstEvents:
        call = call_for(model_name)
        provider = runtime.provider_for(model_name)
        return await first_events(
            lambda: provider.chat_stream(call),
            f"{provider.name}/{model_name}",
            # The first event must also come within the whole call's total.
            min(call.model.timeout.first_token, call.model.timeout.total),
        )

    options = body.get("stream_options") or {}
    return await relay_stream(
        request,
        state,
        lambda: attempts.run(first_events_from),
        keepalive_s=runtime.config.server.keepalive_s,
        strip_usage=options.get("include_usage") is not True,
        drain=request.app[PROCESS].drain,
    )
