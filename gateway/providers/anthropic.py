"""The Anthropic Messages API behind the OpenAI interface.

The I/O is here and kept thin; the translation is pure and lives next door:
`anthropic_request` (OpenAI request → Messages request), `anthropic_response` (message →
`chat.completion`) and `anthropic_stream` (Messages SSE → `chat.completion.chunk` SSE).
Timeouts behave as for OpenAI-compatible upstreams: `connect`, `first_token` until the
response headers, `total` for the whole call.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from gateway.config import AnthropicProviderConfig
from gateway.errors import UpstreamFailure
from gateway.providers.anthropic_request import structured_tool_name, translate_request
from gateway.providers.anthropic_response import (
    failure_from_error_object,
    translate_response,
    usage_of,
)
from gateway.providers.anthropic_stream import StreamTranslator
from gateway.providers.base import EventStream, JsonAnswer, Provider, UpstreamCall
from gateway.providers.http import (
    HTTPEventStream,
    client_timeout,
    failure_from_status,
    new_session,
    read_error_and_raise,
    upstream_errors,
    wait_first,
)


class AnthropicEventStream(EventStream):
    """An Anthropic SSE response, read as OpenAI chunk events."""

    def __init__(
        self, response: aiohttp.ClientResponse, translator: StreamTranslator, what: str
    ) -> None:
        self._events = HTTPEventStream(response, what)
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


class AnthropicProvider(Provider):
    """Anthropic's Messages API through one pooled aiohttp session."""

    def __init__(self, name: str, config: AnthropicProviderConfig) -> None:
        super().__init__(name)
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._headers = {
            "Content-Type": "application/json",
            "anthropic-version": config.anthropic_version,
            **config.headers,
        }
        if config.api_key:
            self._headers["x-api-key"] = config.api_key

    @property
    def session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop.
        if self._session is None:
            self._session = new_session(self.config.max_connections)
        return self._session

    def _what(self, call: UpstreamCall) -> str:
        return f"{self.name}/{call.model_name}"

    async def _post(
        self, call: UpstreamCall, body: dict[str, Any], accept: str
    ) -> aiohttp.ClientResponse:
        timeout = call.timeout
        what = self._what(call)
        request = self.session.post(
            self.config.base_url + "/v1/messages",
            data=orjson.dumps(body),
            headers={**self._headers, "Accept": accept},
            timeout=client_timeout(timeout.connect, timeout.total),
        )
        async with upstream_errors(what):
            response: aiohttp.ClientResponse = await wait_first(
                request, timeout.first_token, what
            )
        if response.status >= 400:
            try:
                await read_error_and_raise(response, what)
            finally:
                response.release()
        return response

    def _translate(self, call: UpstreamCall, *, stream: bool) -> dict[str, Any]:
        body = translate_request(call.body, default_max_tokens=self.config.default_max_tokens)
        if stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
        return body

    async def chat(self, call: UpstreamCall) -> JsonAnswer:
        what = self._what(call)
        response = await self._post(call, self._translate(call, stream=False), "application/json")
        try:
            async with upstream_errors(what):
                body = await response.read()
        finally:
            response.release()
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise UpstreamFailure("bad_response", f"{what}: answer is not JSON") from exc
        if not isinstance(message, dict):
            raise UpstreamFailure("bad_response", f"{what}: answer is not a JSON object")
        if message.get("type") == "error":
            raise failure_from_error_object(body, message.get("error"), what)
        if message.get("type") != "message" or not isinstance(message.get("content"), list):
            raise UpstreamFailure("bad_response", f"{what}: answer is not a message")
        answer = translate_response(
            message, structured_tool=structured_tool_name(call.body), model=call.body.get("model")
        )
        return JsonAnswer(orjson.dumps(answer), usage_of(answer["usage"]))

    async def chat_stream(self, call: UpstreamCall) -> EventStream:
        what = self._what(call)
        response = await self._post(call, self._translate(call, stream=True), "text/event-stream")
        content_type = response.headers.get("Content-Type", "")
        if not content_type.startswith("text/event-stream"):
            try:
                async with upstream_errors(what):
                    body = await response.read()
            finally:
                response.release()
            if b'"error"' in body:
                try:
                    parsed = orjson.loads(body)
                except orjson.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict) and parsed.get("type") == "error":
                    raise failure_from_error_object(body, parsed.get("error"), what)
                raise failure_from_status(500, body, response.headers, what)
            raise UpstreamFailure(
                "bad_response", f"{what}: expected an event stream, got {content_type!r}"
            )
        options = call.body.get("stream_options")
        translator = StreamTranslator(
            model=call.body.get("model"),
            include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
            structured_tool=structured_tool_name(call.body),
            what=what,
        )
        return AnthropicEventStream(response, translator, what)

    async def embeddings(self, call: UpstreamCall) -> JsonAnswer:
        message = f"{self.name}: Anthropic does not support embeddings"
        raise UpstreamFailure(
            "unsupported",
            message,
            status=400,
            upstream_error={"message": message, "type": "invalid_request_error",
                            "param": "model", "code": None},
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
