"""POST /v1/completions: OpenAI's legacy Completions API (`prompt` in, `text` out), as
LlamaIndex's `OpenAILike` and `client.completions.create` call it.

A model whose provider serves `/completions` itself (`openai` with `completions: true`) gets
the body as the client sent it and its answer or stream comes back as its own bytes; any other
model gets one chat request per prompt (`translate.chat_request`), answered back as
`text_completion`s. Both kinds may sit in one fallback chain.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.http.answers import json_response
from gateway.http.body import read_json_object
from gateway.http.request import PROCESS, begin, state_of
from gateway.http.stream import chat_client, relay_stream
from gateway.ingress.completions.continuing import ContinuingCompletionsStream
from gateway.ingress.completions.stream import ChatToCompletionsStream
from gateway.ingress.completions.translate import (
    CompletionsStreamWriter,
    InvalidPrompt,
    chat_request,
    completion_from_chat,
    merge_completions,
    prompts,
)
from gateway.ingress.openai_params import invalid_type, require
from gateway.pipeline.context import apply_request_context
from gateway.pipeline.request import ModelCall, admit
from gateway.providers.base import JsonAnswer, Usage, usage_from_openai
from gateway.providers.upstream import OpenedStream, open_completions_stream

API = "completions"


def _is_tokens(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def validate_completions(body: dict[str, Any]) -> bool:
    """What the gateway relies on, in OpenAI's wording. Returns whether a stream was asked
    for. Token-id prompts are valid (a native upstream takes them); only translation refuses
    them, per model."""
    require(body, "model")
    prompt = require(body, "prompt")
    valid = (
        isinstance(prompt, str)
        or _is_tokens(prompt)
        or (
            isinstance(prompt, list)
            and bool(prompt)
            and (all(isinstance(p, str) for p in prompt) or all(_is_tokens(p) for p in prompt))
        )
    )
    if not valid:
        raise invalid_type(
            "prompt", "a string, an array of strings, or an array of token ids", prompt
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid_type("stream", "a boolean", stream)
    for name in ("max_tokens", "n"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise invalid_type(name, "an integer", value)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid_type("stream_options", "an object", options)
    return bool(stream)


def _estimate_basis(body: dict[str, Any]) -> dict[str, Any]:
    """A chat-shaped body to estimate tokens from: every prompt a user message, and room for
    every prompt's answers."""
    prompt = body["prompt"]
    listed = prompt if isinstance(prompt, list) and not _is_tokens(prompt) else [prompt]
    basis: dict[str, Any] = {
        "messages": [
            {"role": "user", "content": p if isinstance(p, str) else str(p)} for p in listed
        ]
    }
    max_tokens = body.get("max_tokens", 16)
    if isinstance(max_tokens, int):
        basis["max_tokens"] = max_tokens * len(listed)
    if isinstance(body.get("n"), int):
        basis["n"] = body["n"]
    return basis


def _text_prompts(body: dict[str, Any], model_name: str) -> list[str]:
    """The prompts, for a translated model; token ids cannot be sent as chat messages, so a
    chain may move on to a model that takes them natively, else the client gets a 400."""
    try:
        return prompts(body)
    except InvalidPrompt as exc:
        message = f"{model_name}: token-id prompts need a model that serves /completions itself"
        raise UpstreamFailure(
            FailureKind.UNSUPPORTED,
            message,
            status=400,
            upstream_error={
                "message": message,
                "type": "invalid_request_error",
                "param": exc.param,
                "code": None,
            },
        ) from exc


async def completions(request: web.Request) -> web.StreamResponse:
    state_of(request).api = API  # first: a refused key is a completions request too
    runtime, state, principal = begin(request, api_call=True)
    body = await read_json_object(request, runtime.max_body_bytes, runtime.body_timeout_s)
    state.stream = validate_completions(body)
    apply_request_context(state, principal, request.headers, body)
    call = await admit(
        request.app[PROCESS],
        runtime,
        state,
        principal,
        body["model"],
        _estimate_basis(body),
        completion=True,
        cache_body=body,
    )
    if not state.stream:
        answer = await call.run(lambda model_name: _answer(call, body, model_name))
        state.usage = answer.usage
        return json_response(answer.body)
    return relay_stream(
        state,
        lambda: call.run(lambda model_name: _stream(call, body, model_name)),
        keepalive_s=runtime.config.server.keepalive_s,
        # The gateway always asks for usage (natively, or sums it over the translated
        # prompts); a client that did not ask for it does not get the usage-only chunk.
        client=chat_client(body.get("stream_options")),
        drain=request.app[PROCESS].drain,
    )


def _choices_per_prompt(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and n > 0 else 1


async def _answer(call: ModelCall, body: dict[str, Any], model_name: str) -> JsonAnswer:
    provider = call.provider_for(model_name)
    state = call.state
    if provider.speaks_completions:
        with state.waiting_upstream():
            return await provider.completions(call.upstream_call(model_name, body))
    n = _choices_per_prompt(body)
    answers: list[dict[str, Any]] = []
    for i, prompt in enumerate(_text_prompts(body, model_name)):
        with state.waiting_upstream():
            answer = await provider.chat(call.upstream_call(model_name, chat_request(body, prompt)))
        completion = orjson.loads(answer.body)
        answers.append(
            completion_from_chat(completion, model=str(body["model"]), index_offset=i * n)
        )
    merged = merge_completions(answers)
    usage = usage_from_openai(merged.get("usage"))
    return JsonAnswer(orjson.dumps(merged), usage or Usage())


def _one_text_prompt(body: dict[str, Any]) -> str | None:
    """The prompt of a native stream that can be continued through chat: one text prompt,
    one choice, and nothing the chat API cannot give back (the prompt echoed, log
    probabilities, a suffix, best_of)."""
    if _choices_per_prompt(body) != 1 or any(
        body.get(name) for name in ("echo", "logprobs", "suffix", "best_of")
    ):
        return None
    try:
        texts = prompts(body)
    except InvalidPrompt:
        return None
    return texts[0] if len(texts) == 1 else None


async def _stream(call: ModelCall, body: dict[str, Any], model_name: str) -> OpenedStream:
    provider = call.provider_for(model_name)
    if provider.speaks_completions:
        opened = await open_completions_stream(provider, call.upstream_call(model_name, body))
        prompt = _one_text_prompt(body)
        if call.runtime.config.routing.midstream != "continue" or prompt is None:
            return opened
        estimate = call.state.estimate.prompt if call.state.estimate is not None else 0
        native = ContinuingCompletionsStream(
            call, model_name, lambda _model: chat_request(body, prompt), opened[0], estimate
        )
        return native, native.first(opened[1])
    texts = _text_prompts(body, model_name)
    n = _choices_per_prompt(body)

    async def open_prompt(index: int) -> OpenedStream:
        return await call.open_chat_stream(model_name, chat_request(body, texts[index]))

    writer = CompletionsStreamWriter(str(body["model"]))
    inner, first = await open_prompt(0)
    translated = ChatToCompletionsStream(inner, writer, open_prompt, len(texts), n)
    return translated, translated.translate(first)
