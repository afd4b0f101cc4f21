"""The Anthropic Messages API behind the OpenAI interface.

The I/O is here and kept thin; the translation is pure and lives next door:
`anthropic_request` (OpenAI request → Messages request), `anthropic_response` (message →
`chat.completion`) and `anthropic_stream` (Messages SSE → `chat.completion.chunk` SSE).
Timeouts behave as for OpenAI-compatible upstreams: `connect`, `first_token` until a stream's
first event, `total` for the whole call.
"""

from __future__ import annotations

from typing import Any, Literal

import aiohttp
import orjson
from pydantic import field_validator

from gateway.config_base import (
    ConfigModel,
    PositiveInt,
    check_http_url,
)
from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.providers.anthropic_request import structured_tool_name, translate_request
from gateway.providers.anthropic_response import (
    failure_from_error_object,
    translate_response,
    usage_of,
)
from gateway.providers.anthropic_stream import StreamTranslator
from gateway.providers.base import EventStream, JsonAnswer, UpstreamCall
from gateway.providers.http import (
    HTTPEventStream,
    HTTPProvider,
    failure_from_status,
    is_event_stream,
    json_object,
)
from gateway.providers.upstream import stream_deadline


class AnthropicProviderConfig(ConfigModel):
    type: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    api_key: str | None = None
    anthropic_version: str = "2023-06-01"
    headers: dict[str, str] = {}
    max_connections: PositiveInt = 1000
    default_max_tokens: PositiveInt = 4096

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value)


class AnthropicEventStream(EventStream):
    """An Anthropic SSE response, read as OpenAI chunk events."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        translator: StreamTranslator,
        what: str,
        deadline: float | None = None,
    ) -> None:
        self._events = HTTPEventStream(response, what, deadline)
        self.translator = translator

    async def next_events(self) -> list[bytes] | None:
        while True:
            raw = await self._events.next_raw_events()
            if raw is None:
                self.translator.finish()
                return None
            out: list[bytes] = []
            for event in raw:
                out.extend(self.translator.feed(event))
            if out:
                return out
            # Only pings (or events with nothing to say to an OpenAI client): read on.

    async def aclose(self, *, completed: bool) -> None:
        await self._events.aclose(completed=completed)


class AnthropicProvider(HTTPProvider):
    """Anthropic's Messages API through one pooled aiohttp session."""

    def __init__(self, name: str, config: AnthropicProviderConfig) -> None:
        headers = {"anthropic-version": config.anthropic_version, **config.headers}
        if config.api_key:
            headers["x-api-key"] = config.api_key
        super().__init__(name, config.max_connections, headers)
        self.config = config

    async def _post(
        self, call: UpstreamCall, body: dict[str, Any], *, stream: bool
    ) -> aiohttp.ClientResponse:
        return await self.post(call, self.config.base_url + "/v1/messages", body, stream=stream)

    def _translate(self, call: UpstreamCall, *, stream: bool) -> dict[str, Any]:
        body = translate_request(call.body, default_max_tokens=self.config.default_max_tokens)
        if stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
        return body

    async def chat(self, call: UpstreamCall) -> JsonAnswer:
        what = self.what(call)
        response = await self._post(call, self._translate(call, stream=False), stream=False)
        body = await self.read_all(response, what)
        message = json_object(body, what)
        if message.get("type") == "error":
            raise failure_from_error_object(body, message.get("error"), what)
        if message.get("type") != "message" or not isinstance(message.get("content"), list):
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, f"{what}: answer is not a message")
        answer = translate_response(
            message, structured_tool=structured_tool_name(call.body), model=call.body.get("model")
        )
        return JsonAnswer(orjson.dumps(answer), usage_of(answer["usage"]))

    async def chat_stream(self, call: UpstreamCall) -> EventStream:
        what = self.what(call)
        deadline = stream_deadline(call)
        response = await self._post(call, self._translate(call, stream=True), stream=True)
        if not is_event_stream(response):
            content_type = response.headers.get("Content-Type", "")
            body = await self.read_all(response, what)
            if b'"error"' in body:
                try:
                    parsed = orjson.loads(body)
                except orjson.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict) and parsed.get("type") == "error":
                    raise failure_from_error_object(body, parsed.get("error"), what)
                raise failure_from_status(500, body, response.headers, what)
            raise UpstreamFailure(
                FailureKind.BAD_RESPONSE, f"{what}: expected an event stream, got {content_type!r}"
            )
        options = call.body.get("stream_options")
        translator = StreamTranslator(
            model=call.body.get("model"),
            include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
            structured_tool=structured_tool_name(call.body),
            what=what,
        )
        return AnthropicEventStream(response, translator, what, deadline)

    async def embeddings(self, call: UpstreamCall) -> JsonAnswer:
        message = f"{self.name}: Anthropic does not support embeddings"
        raise UpstreamFailure(
            FailureKind.UNSUPPORTED,
            message,
            status=400,
            upstream_error={
                "message": message,
                "type": "invalid_request_error",
                "param": "model",
                "code": None,
            },
        )
