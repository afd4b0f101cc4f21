"""The built-in `mock` provider: no network, deterministic answers in OpenAI's exact shapes.

For demos, tests and benchmarks. The same prompt always gets the same text. The config sets
the pace (`first_token_ms`, `pace_ms`) and can make it always fail (`fail_status`); a request
can ask for behaviour in its last user message with directives such as `mock:status=503`,
`mock:first_token_ms=2000`, `mock:pace_ms=50`, `mock:fail_after=3` (an error event after three
content chunks) or `mock:tokens=40`. Asked with `tools`, it calls one; asked for
`response_format` JSON, it answers JSON that fits the schema (see `mock_output`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import struct
import time
from typing import Any, Literal

import orjson
from pydantic import Field

from gateway.config_base import (
    ConfigModel,
    NonNegativeFloat,
    PositiveInt,
)
from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.providers.base import EventStream, JsonAnswer, Provider, UpstreamCall, Usage
from gateway.providers.mock_output import (
    ToolCall,
    json_content,
    pieces,
    structured_prompt_tokens,
    tool_call,
)
from gateway.providers.openai import encode_base64_floats
from gateway.sse import DONE, encode_data
from gateway.tokens import text_tokens


class MockProviderConfig(ConfigModel):
    """The built-in provider: deterministic text, no network."""

    type: Literal["mock"]
    first_token_ms: NonNegativeFloat = 0
    pace_ms: NonNegativeFloat = 0  # between stream chunks
    completion_tokens: PositiveInt = 16  # answer length when the request sets no max_tokens
    fail_status: int | None = Field(default=None, ge=400, le=599)  # always fail with this status
    embedding_dimensions: PositiveInt = 8


_WORDS = (
    "the",
    "gateway",
    "answers",
    "every",
    "request",
    "with",
    "words",
    "chosen",
    "from",
    "this",
    "short",
    "list",
    "so",
    "that",
    "tests",
    "and",
    "demos",
    "see",
    "real",
    "text",
    "arrive",
    "at",
    "a",
    "steady",
    "pace",
    "while",
    "nothing",
    "leaves",
    "the",
    "machine",
    "and",
    "the",
    "same",
    "prompt",
    "always",
    "gets",
    "the",
    "same",
    "reply",
    "token",
    "by",
    "token",
)

MAX_DIMENSIONS = 3072  # OpenAI's largest embedding model's

_DIRECTIVE = re.compile(r"mock:([a-z_]+)=(\d+)")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _prompt_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    return "\n".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def estimate_tokens(text: str) -> int:
    """The gateway's own estimate, at least one token: a mock answer always has a prompt."""
    return max(1, text_tokens(text))


class _Plan:
    """What the mock will do for one request: config, overridden by directives."""

    def __init__(self, config: MockProviderConfig, body: dict[str, Any]) -> None:
        directives = {k: int(v) for k, v in _DIRECTIVE.findall(_last_user_text(body))}
        self.status = directives.get("status", config.fail_status)
        self.first_token_s = directives.get("first_token_ms", config.first_token_ms) / 1000
        self.pace_s = directives.get("pace_ms", config.pace_ms) / 1000
        self.fail_after = directives.get("fail_after")
        prompt = _prompt_text(body)
        self.prompt_tokens = estimate_tokens(prompt) + structured_prompt_tokens(body)
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
        wanted = directives.get("tokens", config.completion_tokens)
        words = [("" if i == 0 else " ") + _WORDS[(seed + i) % len(_WORDS)] for i in range(wanted)]
        if words:
            words[0] = words[0].capitalize()
        # What is streamed: the tool call's arguments, JSON content or the words, each piece
        # one delta and one completion token, so usage counts exactly what was sent.
        self.tool_call: ToolCall | None = tool_call(body, seed, _last_user_text(body))
        if self.tool_call is not None:
            output = pieces(self.tool_call.arguments)
        else:
            json_text = json_content(body, seed, "".join(words))
            output = words if json_text is None else pieces(json_text)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        self.truncated = isinstance(limit, int) and 0 < limit < len(output)
        self.tokens = output[:limit] if self.truncated else output
        self.n_tokens = len(self.tokens)

    @property
    def finish_reason(self) -> str:
        if self.truncated:
            return "length"
        return "stop" if self.tool_call is None else "tool_calls"

    def message(self) -> dict[str, Any]:
        """The whole answer's message."""
        text = "".join(self.tokens)
        if self.tool_call is None:
            return {"role": "assistant", "content": text, "refusal": None, "annotations": []}
        call = self.tool_call
        return {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "annotations": [],
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": text},
                }
            ],
        }

    def first_delta(self) -> dict[str, Any]:
        """A stream's first delta: the role, and a tool call's id and name."""
        if self.tool_call is None:
            return {"role": "assistant", "content": "", "refusal": None}
        call = self.tool_call
        head = {"name": call.name, "arguments": ""}
        return {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [{"index": 0, "id": call.id, "type": "function", "function": head}],
        }

    def delta(self, piece: str) -> dict[str, Any]:
        if self.tool_call is None:
            return {"content": piece}
        return {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.n_tokens,
            "total_tokens": self.prompt_tokens + self.n_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def raise_if_failing(self, what: str) -> None:
        if self.status is not None and self.status >= 400:
            kind = (
                FailureKind.RATE_LIMITED
                if self.status == 429
                else FailureKind.SERVER_ERROR
                if self.status >= 500
                else FailureKind.CLIENT_ERROR
            )
            raise UpstreamFailure(
                kind,
                f"{what}: HTTP {self.status}: mock failure as asked",
                status=self.status,
                upstream_error={"message": "mock failure as asked", "type": "mock_error"},
            )


class _MockStream(EventStream):
    def __init__(self, plan: _Plan, call: UpstreamCall, include_usage: bool) -> None:
        self._plan = plan
        self._events = self._generate(call, include_usage)

    async def _generate(self, call: UpstreamCall, include_usage: bool) -> Any:
        plan = self._plan
        base = {
            "id": f"chatcmpl-mock-{call.request_id}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": call.body.get("model"),
            "service_tier": "default",
        }
        usage_field: dict[str, Any] = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return encode_data(orjson.dumps({**base, "choices": [choice], **usage_field}))

        await asyncio.sleep(plan.first_token_s)
        yield chunk(plan.first_delta(), None)
        for i, token in enumerate(plan.tokens):
            if plan.fail_after is not None and i >= plan.fail_after:
                error = {
                    "message": "mock failure mid-stream as asked",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
                yield encode_data(orjson.dumps({"error": error}))
                return
            if plan.pace_s:
                await asyncio.sleep(plan.pace_s)
            yield chunk(plan.delta(token), None)
        yield chunk({}, plan.finish_reason)
        if include_usage:
            yield encode_data(orjson.dumps({**base, "choices": [], "usage": plan.usage()}))
        yield DONE

    async def next_events(self) -> list[bytes] | None:
        try:
            return [await anext(self._events)]
        except StopAsyncIteration:
            return None

    async def aclose(self, *, completed: bool) -> None:
        await self._events.aclose()


class MockProvider(Provider):
    """Answers from memory at the configured pace."""

    def __init__(self, name: str, config: MockProviderConfig) -> None:
        super().__init__(name)
        self.config = config

    async def chat(self, call: UpstreamCall) -> JsonAnswer:
        plan = _Plan(self.config, call.body)
        plan.raise_if_failing(f"{self.name}/{call.model_name}")
        await asyncio.sleep(plan.first_token_s + plan.pace_s * plan.n_tokens)
        answer: dict[str, Any] = {
            "id": f"chatcmpl-mock-{call.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": plan.message(),
                    "logprobs": None,
                    "finish_reason": plan.finish_reason,
                }
            ],
            "usage": plan.usage(),
            "service_tier": "default",
        }
        return JsonAnswer(orjson.dumps(answer), Usage(plan.prompt_tokens, plan.n_tokens, 0))

    async def chat_stream(self, call: UpstreamCall) -> EventStream:
        plan = _Plan(self.config, call.body)
        plan.raise_if_failing(f"{self.name}/{call.model_name}")
        options = call.body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return _MockStream(plan, call, include_usage)

    async def embeddings(self, call: UpstreamCall) -> JsonAnswer:
        body = call.body
        if self.config.fail_status is not None:
            raise UpstreamFailure(
                FailureKind.SERVER_ERROR
                if self.config.fail_status >= 500
                else FailureKind.CLIENT_ERROR,
                f"{self.name}/{call.model_name}: HTTP {self.config.fail_status}: mock failure",
                status=self.config.fail_status,
            )
        inputs = body["input"]
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        dims = body.get("dimensions") or self.config.embedding_dimensions
        if dims > MAX_DIMENSIONS:
            # As OpenAI refuses it; building a vector of any size asked would block the loop.
            message = f"'dimensions' must be at most {MAX_DIMENSIONS}, got {dims}."
            raise UpstreamFailure(
                FailureKind.CLIENT_ERROR,
                f"{self.name}/{call.model_name}: HTTP 400: {message}",
                status=400,
                upstream_error={
                    "message": message,
                    "type": "invalid_request_error",
                    "param": "dimensions",
                    "code": None,
                },
            )
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        prompt_tokens = 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            prompt_tokens += estimate_tokens(text) if isinstance(item, str) else len(item)
            vector = _unit_vector(text, dims)
            embedding: Any = encode_base64_floats(vector) if as_base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        answer = {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
        return JsonAnswer(orjson.dumps(answer), Usage(prompt_tokens, 0, 0))


def _unit_vector(text: str, dims: int) -> list[float]:
    """A deterministic vector of length 1 derived from the text."""
    raw: list[float] = []
    counter = 0
    while len(raw) < dims:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        raw.extend(v / 2**31 - 1.0 for v in struct.unpack(">8I", digest))
        counter += 1
    raw = raw[:dims]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    # Rounded through float32 so float and base64 answers carry the same numbers.
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in raw]
