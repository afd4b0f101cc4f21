"""Any OpenAI-compatible API: OpenAI, vLLM, Ollama, OpenRouter, Azure-style base URLs.

Answers pass through as the upstream's own bytes; only usage is read from them. The client's
Authorization never goes upstream: the provider's own key from config does.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Coroutine
from typing import Any, Literal

import orjson
from pydantic import field_validator

from gateway.config_base import (
    ConfigModel,
    PositiveInt,
    check_http_url,
)
from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.providers.base import (
    EventStream,
    JsonAnswer,
    UpstreamCall,
    usage_from_openai,
    usage_from_responses,
)
from gateway.providers.http import (
    HTTPEventStream,
    HTTPProvider,
    failure_from_status,
    is_event_stream,
    json_object,
)
from gateway.providers.upstream import stream_deadline
from gateway.providers.wire import UpstreamResponse


class OpenAIProviderConfig(ConfigModel):
    type: Literal["openai"]
    base_url: str
    api_key: str | None = None
    headers: dict[str, str] = {}
    max_connections: PositiveInt = 1000
    # The upstream serves the legacy `/completions` endpoint (OpenAI, vLLM, Ollama, llama.cpp
    # do; many hosted chat-only APIs do not): legacy Completions then go to it as sent.
    completions: bool = False
    # The upstream serves the Responses API (`/responses`: OpenAI, and compatible servers
    # that implement it): Responses requests then go to it as sent.
    responses: bool = False

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value)


class _OpenAIEventStream(HTTPEventStream, EventStream):
    """The upstream's events are already OpenAI's: relayed as they are."""

    __slots__ = ()

    next_events = HTTPEventStream.next_raw_events  # no extra coroutine per read


class OpenAIProvider(HTTPProvider):
    """An OpenAI-compatible upstream, reached through one connection pool."""

    def __init__(self, name: str, config: OpenAIProviderConfig) -> None:
        headers = dict(config.headers)
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        super().__init__(name, config.max_connections, headers)
        self.config = config

    async def _post(self, call: UpstreamCall, path: str, *, stream: bool) -> UpstreamResponse:
        return await self.post(call, self.config.base_url + path, call.body, stream=stream)

    async def _json(self, call: UpstreamCall, path: str) -> tuple[bytes, dict[str, Any]]:
        what = self.what(call)
        response = await self.post(call, self.config.base_url + path, call.body, stream=False)
        body = await self.read_all(response, what)
        parsed = json_object(body, what)
        if parsed.get("error"):
            # Some compatible servers answer errors with status 200.
            raise failure_from_status(500, body, response.headers, what)
        return body, parsed

    async def chat(self, call: UpstreamCall) -> JsonAnswer:
        body, parsed = await self._json(call, "/chat/completions")
        if not isinstance(parsed.get("choices"), list):
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE, f"{self.name}/{call.model_name}: answer has no choices"
            )
        return JsonAnswer(body, usage_from_openai(parsed.get("usage")))

    def chat_stream(self, call: UpstreamCall) -> Coroutine[Any, Any, EventStream]:
        # A plain function handing back the coroutine: no extra coroutine layer per stream.
        return self._event_stream(call, "/chat/completions")

    async def _event_stream(self, call: UpstreamCall, path: str) -> EventStream:
        what = self.what(call)
        deadline = stream_deadline(call)
        response = await self._post(call, path, stream=True)
        if not is_event_stream(response):
            content_type = response.headers.get("content-type", "")
            body = await self.read_all(response, what)
            if b'"error"' in body:
                raise failure_from_status(500, body, response.headers, what)
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE, f"{what}: expected an event stream, got {content_type!r}"
            )
        return _OpenAIEventStream(response, what, deadline)

    @property
    def speaks_completions(self) -> bool:
        return self.config.completions

    async def completions(self, call: UpstreamCall) -> JsonAnswer:
        body, parsed = await self._json(call, "/completions")
        if not isinstance(parsed.get("choices"), list):
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE, f"{self.name}/{call.model_name}: answer has no choices"
            )
        return JsonAnswer(body, usage_from_openai(parsed.get("usage")))

    def completions_stream(self, call: UpstreamCall) -> Coroutine[Any, Any, EventStream]:
        return self._event_stream(call, "/completions")

    @property
    def speaks_responses(self) -> bool:
        return self.config.responses

    async def responses(self, call: UpstreamCall) -> JsonAnswer:
        body, parsed = await self._json(call, "/responses")
        if parsed.get("object") != "response" or not isinstance(parsed.get("output"), list):
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE, f"{self.name}/{call.model_name}: not a Response object"
            )
        return JsonAnswer(body, usage_from_responses(parsed.get("usage")))

    def responses_stream(self, call: UpstreamCall) -> Coroutine[Any, Any, EventStream]:
        return self._event_stream(call, "/responses")

    async def embeddings(self, call: UpstreamCall) -> JsonAnswer:
        body, parsed = await self._json(call, "/embeddings")
        data = parsed.get("data")
        if not isinstance(data, list):
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE, f"{self.name}/{call.model_name}: answer has no data"
            )
        if call.body.get("encoding_format") == "base64" and any(
            isinstance(item, dict) and isinstance(item.get("embedding"), list) for item in data
        ):
            # Some compatible servers (older Ollama, some vLLM builds) ignore base64 and send
            # floats; the openai SDK asks for base64 by default and would fail to decode them.
            for item in data:
                vector = item.get("embedding") if isinstance(item, dict) else None
                if isinstance(vector, list):
                    item["embedding"] = encode_base64_floats(vector)
            body = orjson.dumps(parsed)
        return JsonAnswer(body, usage_from_openai(parsed.get("usage")))


def encode_base64_floats(vector: list[float]) -> str:
    """OpenAI's base64 embedding encoding: little-endian float32, base64."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
