"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API.

Each model of the route is called the way its provider speaks: an `anthropic` provider gets
the body as the client sent it (only `model` replaced, gateway-only fields removed,
`anthropic-beta` forwarded) and its answer or stream comes back as its own bytes; any other
provider gets the body translated to chat completions, and its answer or stream is translated
back. Both kinds may sit in one fallback chain: the client sees one Anthropic answer either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError, InvalidRequest
from gateway.http import answers
from gateway.http.answers import json_response
from gateway.http.body import json_type, read_json_object
from gateway.http.request import PROCESS, begin, state_of
from gateway.http.stream import relay_stream
from gateway.ingress.messages.continuing import ContinuingMessagesStream
from gateway.ingress.messages.errors import anthropic_status, error_body
from gateway.ingress.messages.from_chat import message_from_chat, new_message_id
from gateway.ingress.messages.stream import ChatToMessagesStream, MessagesClientStream
from gateway.ingress.messages.stream_from_chat import MessagesStreamWriter
from gateway.ingress.messages.to_chat import chat_request, reasoning_effort
from gateway.pipeline.context import RequestState, apply_request_context
from gateway.pipeline.request import ModelCall, admit
from gateway.providers.base import JsonAnswer
from gateway.providers.messages_events import open_messages_stream
from gateway.providers.upstream import OpenedStream
from gateway.tokens import TokenEstimate

API = "messages"


def validate_messages(body: dict[str, Any], *, count_only: bool = False) -> bool:
    """What the gateway itself relies on, in Anthropic's wording (`field: problem`). Returns
    whether a stream was asked for."""
    model = body.get("model")
    if model is None:
        raise InvalidRequest("model: Field required")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(f"model: Input should be a valid string, not {json_type(model)}")
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("messages: Field required")
    if not isinstance(messages, list):
        raise InvalidRequest(f"messages: Input should be a valid list, not {json_type(messages)}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages.{i}: Input should be a valid dictionary")
        if message.get("role") not in ("user", "assistant"):
            raise InvalidRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
    if count_only:
        return False
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Input should be a positive integer")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("stream: Input should be a valid boolean")
    return bool(stream)


def _user_from_metadata(state: RequestState, headers: Any, body: dict[str, Any]) -> None:
    """`metadata.user_id` is Anthropic's end user (`X-Gateway-User` still wins)."""
    if headers.get("x-gateway-user"):
        return
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user, str) and user:
        state.user = user


async def _admitted(
    request: web.Request, *, count_only: bool
) -> tuple[ModelCall, RequestState, dict[str, Any], dict[str, Any]]:
    """Begin, read and check the body, admit: the call, the state, the client's body (gateway
    fields removed) and its chat translation (also the basis of the token estimate)."""
    state_of(request).api = API  # first: a refused key is a messages request too
    runtime, state, principal = begin(request, api_call=True)
    body = await read_json_object(request, runtime.max_body_bytes, runtime.body_timeout_s)
    state.stream = validate_messages(body, count_only=count_only)
    apply_request_context(state, principal, request.headers, body)
    _user_from_metadata(state, request.headers, body)
    chat_body = chat_request(body)
    call = await admit(
        request.app[PROCESS],
        runtime,
        state,
        principal,
        body["model"],
        chat_body,
        completion=not count_only,
        # The client's own body decides the answer (a native upstream gets it as sent), and
        # so does the beta header forwarded with it. Token counts are not cached.
        cache_body=body,
        cache_vary=request.headers.get("anthropic-beta") or "",
        cacheable=not count_only,
    )
    return call, state, body, chat_body


def _chat_for(
    call: ModelCall, body: dict[str, Any], chat_body: dict[str, Any]
) -> Callable[[str], dict[str, Any]]:
    """The chat body each model gets: `thinking` becomes `reasoning_effort` for a model that
    takes it (`reasoning: true`) and is left out for the rest."""
    effort = reasoning_effort(body.get("thinking"))
    if effort is None:
        return lambda _model_name: chat_body
    with_effort = {**chat_body, "reasoning_effort": effort}
    models = call.runtime.config.models
    return lambda model_name: with_effort if models[model_name].reasoning else chat_body


def _forwarded(request: web.Request) -> dict[str, str] | None:
    beta = request.headers.get("anthropic-beta")
    return {"anthropic-beta": beta} if beta else None


async def messages(request: web.Request) -> web.StreamResponse:
    call, state, body, chat_body = await _admitted(request, count_only=False)
    headers = _forwarded(request)
    requested = str(body["model"])
    chat_for = _chat_for(call, body, chat_body)

    if not state.stream:

        async def answer_from(model_name: str) -> JsonAnswer:
            provider = call.provider_for(model_name)
            with state.waiting_upstream():
                if provider.speaks_messages:
                    return await provider.messages(call.upstream_call(model_name, body, headers))
                answer = await provider.chat(call.upstream_call(model_name, chat_for(model_name)))
            completion = orjson.loads(answer.body)
            message = message_from_chat(completion, model=requested)
            return JsonAnswer(orjson.dumps(message), answer.usage)

        answer = await call.run(answer_from)
        state.usage = answer.usage
        return json_response(answer.body)

    estimate = state.estimate.prompt if state.estimate is not None else 0
    message_id = new_message_id()

    def writer_for() -> MessagesStreamWriter:
        return MessagesStreamWriter(
            requested, input_tokens_estimate=estimate, message_id=message_id
        )

    async def stream_from(model_name: str) -> OpenedStream:
        provider = call.provider_for(model_name)
        if provider.speaks_messages:
            opened = await open_messages_stream(
                provider, call.upstream_call(model_name, body, headers)
            )
            if call.runtime.config.routing.midstream != "continue":
                return opened
            # Continued through the chat API (the same translation a chat model gets).
            native = ContinuingMessagesStream(
                call, model_name, chat_for, opened[0], estimate, writer_for()
            )
            return native, native.first(opened[1])
        inner, first = await call.open_chat_stream(model_name, chat_for(model_name), chat_for)
        translated = ChatToMessagesStream(inner, writer_for())
        return translated, translated.translate(first)

    runtime = call.runtime
    return relay_stream(
        state,
        lambda: call.run(stream_from),
        keepalive_s=runtime.config.server.keepalive_s,
        client=MessagesClientStream(),
        drain=request.app[PROCESS].drain,
    )


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """Exact from an Anthropic upstream (its own count_tokens); the gateway's estimate from
    any other model of the route."""
    call, state, body, chat_body = await _admitted(request, count_only=True)
    headers = _forwarded(request)

    async def count_with(model_name: str) -> JsonAnswer:
        provider = call.provider_for(model_name)
        if provider.speaks_messages:
            upstream_body = {k: v for k, v in body.items() if k not in ("stream", "max_tokens")}
            with state.waiting_upstream():
                return await provider.count_tokens(
                    call.upstream_call(model_name, upstream_body, headers)
                )
        counted = TokenEstimate(chat_body, completion=False).prompt
        return JsonAnswer(orjson.dumps({"input_tokens": counted}), None)

    answer = await call.run(count_with)
    return json_response(answer.body)


def error_response(error: GatewayError, state: RequestState) -> web.Response:
    """Any error on these paths, in Anthropic's dialect: its status (529 when every model
    failed), its error type, `request-id`, and `retry-after` where a retry can help."""
    status = anthropic_status(error.status, error.code)
    body = error_body(status, error.message, request_id=state.request_id)
    response = answers.error_response(error, state, status=status, body=body)
    response.headers["request-id"] = state.request_id  # also before the handler ran
    if status in (429, 529) and "retry-after" not in response.headers:
        response.headers["retry-after"] = "1"
    return response
