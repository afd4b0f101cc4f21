"""The Anthropic Messages API, spoken two ways.

- Natively, to a client of the gateway's own `/v1/messages`: the client's body goes upstream as
  it was sent (model id replaced) and the answer, or every event of a stream, comes back as the
  upstream's own bytes (`messages`, `messages_stream`, `count_tokens`).
- Behind the OpenAI interface, to every other client (`chat`, `chat_stream`). The I/O is here
  and kept thin; the translation is pure and lives next door: `anthropic_request` (OpenAI
  request → Messages request), `anthropic_response` (message → `chat.completion`) and
  `anthropic_stream` (Messages SSE → `chat.completion.chunk` SSE).

Timeouts behave as for OpenAI-compatible upstreams: `connect`, `first_token` until a stream's
first event, `total` for the whole call.
"""

from __future__ import annotations

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
from gateway.providers.anthropic_request import structured_tool_name, translate_request
from gateway.providers.anthropic_response import (
    failure_from_error_object,
    translate_response,
    usage_of,
)
from gateway.providers.anthropic_stream import StreamTranslator
from gateway.providers.base import EventStream, JsonAnswer, UpstreamCall, Usage
from gateway.providers.http import (
    HTTPEventStream,
    HTTPProvider,
    failure_from_status,
    is_event_stream,
    json_object,
)
from gateway.providers.upstream import stream_deadline
from gateway.providers.wire import UpstreamResponse


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
        response: UpstreamResponse,
        translator: StreamTranslator,
        what: str,
        deadline: float | None = None,
    ) -> None:
        self._events = HTTPEventStream(response, what, deadline)
        self.translator = translator
        # An error event that came in the same read as content: raised on the next read, so
        # that the content before it reaches the client first.
        self._failure: UpstreamFailure | None = None

    def exact_usage(self) -> Usage | None:
        return self.translator.usage if self.translator.saw_usage else None

    def watch_idle(self, idle_s: float) -> None:
        self._events.watch_idle(idle_s)

    async def next_events(self) -> list[bytes] | None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        while True:
            raw = await self._events.next_raw_events()
            if raw is None:
                self.translator.finish()
                return None
            out: list[bytes] = []
            for event in raw:
                try:
                    out.extend(self.translator.feed(event))
                except UpstreamFailure as failure:
                    if not out:
                        raise
                    self._failure = failure
                    return out
            if out:
                return out
            # Only pings (or events with nothing to say to an OpenAI client): read on.

    async def aclose(self, *, completed: bool) -> None:
        await self._events.aclose(completed=completed)


class _NativeEventStream(HTTPEventStream, EventStream):
    """An Anthropic stream relayed to a Messages client: its events as they came."""

    __slots__ = ()

    next_events = HTTPEventStream.next_raw_events  # no extra coroutine per read


class AnthropicProvider(HTTPProvider):
    """Anthropic's Messages API through one connection pool."""

    speaks_messages = True
    continues_by_prefill = True  # a trailing assistant turn is where the model goes on from

    def __init__(self, name: str, config: AnthropicProviderConfig) -> None:
        headers = {"anthropic-version": config.anthropic_version, **config.headers}
        if config.api_key:
            headers["x-api-key"] = config.api_key
        super().__init__(name, config.max_connections, headers)
        self.config = config

    async def _post(
        self, call: UpstreamCall, body: dict[str, Any], *, stream: bool, path: str = "/v1/messages"
    ) -> UpstreamResponse:
        return await self.post(call, self.config.base_url + path, body, stream=stream)

    async def _read_message(self, call: UpstreamCall, body: dict[str, Any]) -> tuple[bytes, Any]:
        """A whole message: its bytes and the parsed message, or the classified failure."""
        what = self.what(call)
        raw = await self.read_all(await self._post(call, body, stream=False), what)
        message = json_object(raw, what)
        if message.get("type") == "error":
            raise failure_from_error_object(raw, message.get("error"), what)
        if message.get("type") != "message" or not isinstance(message.get("content"), list):
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, f"{what}: answer is not a message")
        return raw, message

    async def _open_events(
        self, call: UpstreamCall, body: dict[str, Any]
    ) -> tuple[UpstreamResponse, float]:
        """A stream's response, checked to be an event stream (an error answered as JSON is
        raised classified), and the deadline its `total` sets, counted from before the POST."""
        what = self.what(call)
        deadline = stream_deadline(call)
        response = await self._post(call, body, stream=True)
        if is_event_stream(response):
            return response, deadline
        content_type = response.headers.get("content-type", "")
        raw = await self.read_all(response, what)
        if b'"error"' in raw:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict) and parsed.get("type") == "error":
                raise failure_from_error_object(raw, parsed.get("error"), what)
            raise failure_from_status(500, raw, response.headers, what)
        raise UpstreamFailure(
            FailureKind.BAD_RESPONSE, f"{what}: expected an event stream, got {content_type!r}"
        )

    async def messages(self, call: UpstreamCall) -> JsonAnswer:
        body = {k: v for k, v in call.body.items() if k != "stream"}
        raw, message = await self._read_message(call, body)
        return JsonAnswer(raw, usage_of(message.get("usage")))

    async def messages_stream(self, call: UpstreamCall) -> EventStream:
        response, deadline = await self._open_events(call, {**call.body, "stream": True})
        return _NativeEventStream(response, self.what(call), deadline)

    async def count_tokens(self, call: UpstreamCall) -> JsonAnswer:
        what = self.what(call)
        response = await self._post(call, call.body, stream=False, path="/v1/messages/count_tokens")
        raw = await self.read_all(response, what)
        counted = json_object(raw, what)
        if not isinstance(counted.get("input_tokens"), int):
            raise UpstreamFailure(FailureKind.BAD_RESPONSE, f"{what}: answer has no input_tokens")
        return JsonAnswer(raw, None)

    def _translate(self, call: UpstreamCall, *, stream: bool) -> dict[str, Any]:
        body = translate_request(call.body, default_max_tokens=self.config.default_max_tokens)
        if stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
        return body

    async def chat(self, call: UpstreamCall) -> JsonAnswer:
        _, message = await self._read_message(call, self._translate(call, stream=False))
        answer = translate_response(
            message, structured_tool=structured_tool_name(call.body), model=call.body.get("model")
        )
        return JsonAnswer(orjson.dumps(answer), usage_of(message.get("usage")))

    async def chat_stream(self, call: UpstreamCall) -> EventStream:
        what = self.what(call)
        response, deadline = await self._open_events(call, self._translate(call, stream=True))
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
