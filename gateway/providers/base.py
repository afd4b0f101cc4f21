"""What every provider offers the gateway, whatever it speaks upstream.

A provider answers in OpenAI's wire format: a JSON body for plain calls, and OpenAI
`chat.completion.chunk` SSE events for streams. OpenAI-compatible upstreams pass through as
bytes; a provider speaking another format (Anthropic) translates behind this interface.
Failures are raised as `UpstreamFailure`, classified so routing can decide what comes next.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.config_base import ConfigModel, PositiveFloat
from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind


class TimeoutConfig(ConfigModel):
    """Seconds. `connect`: to open a connection. `first_token`: a stream's first event (a
    whole answer has no first token; only `total` bounds it). `total`: the whole call.
    `idle`: the longest silence between two stream events after the first (a `stall`)."""

    connect: PositiveFloat = 5
    first_token: PositiveFloat = 60
    total: PositiveFloat = 600
    idle: PositiveFloat = 30


@dataclass(slots=True)
class Usage:
    """Token counts as the upstream reported them, in OpenAI's convention: `prompt_tokens`
    counts every input token, cache reads (`cached_tokens`) and cache writes
    (`cache_write_tokens`, of which `cache_write_1h_tokens` went to a 1-hour cache) included;
    `completion_tokens` counts `reasoning_tokens` too."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0


def summed_usage(a: Usage | None, b: Usage | None) -> Usage | None:
    """Two calls' usage added up (None: neither reported any)."""
    if a is None or b is None:
        return a or b
    return Usage(
        a.prompt_tokens + b.prompt_tokens,
        a.completion_tokens + b.completion_tokens,
        a.cached_tokens + b.cached_tokens,
        a.cache_write_tokens + b.cache_write_tokens,
        a.cache_write_1h_tokens + b.cache_write_1h_tokens,
        a.reasoning_tokens + b.reasoning_tokens,
    )


def _detail(details: Any, name: str) -> int:
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_from_openai(obj: Any) -> Usage | None:
    """Read an OpenAI `usage` object; None when there is none or it is malformed."""
    if not isinstance(obj, dict):
        return None
    prompt = obj.get("prompt_tokens")
    completion = obj.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    # Inline rather than through `_detail`: this runs for every answer and stream.
    details = obj.get("prompt_tokens_details")
    cached = cache_write = reasoning = 0
    if isinstance(details, dict):
        cached = details.get("cached_tokens") or 0
        # Not OpenAI's own field: compatible servers that bill cache writes report it so.
        cache_write = details.get("cache_write_tokens") or 0
    completion_details = obj.get("completion_tokens_details")
    if isinstance(completion_details, dict):
        reasoning = completion_details.get("reasoning_tokens") or 0
    if not (type(cached) is int and type(cache_write) is int and type(reasoning) is int):
        return Usage(
            prompt,
            completion,
            _detail(details, "cached_tokens"),
            _detail(details, "cache_write_tokens"),
            0,
            _detail(completion_details, "reasoning_tokens"),
        )
    return Usage(prompt, completion, cached, cache_write, 0, reasoning)


def usage_from_responses(obj: Any) -> Usage | None:
    """Read a Responses API `usage` object (`input_tokens`, `output_tokens`,
    `input_tokens_details.cached_tokens`); None when there is none or it is malformed."""
    if not isinstance(obj, dict):
        return None
    prompt = obj.get("input_tokens")
    completion = obj.get("output_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = obj.get("input_tokens_details")
    return Usage(
        prompt,
        completion,
        _detail(details, "cached_tokens"),
        _detail(details, "cache_write_tokens"),
        0,
        _detail(obj.get("output_tokens_details"), "reasoning_tokens"),
    )


@dataclass(slots=True)  # not frozen: made for every attempt (see usage.record.UsageRecord)
class UpstreamCall:
    """One attempt at one model: the body to send (model id already the upstream's own)."""

    model_name: str
    timeout: TimeoutConfig  # the model's `timeout:`
    body: dict[str, Any]
    request_id: str
    headers: Mapping[str, str] | None = None  # the client's headers to forward (anthropic-beta)


@dataclass(slots=True)
class JsonAnswer:
    """A whole answer: the JSON bytes to relay and the usage read from them."""

    body: bytes
    usage: Usage | None


class EventStream(abc.ABC):
    """An open upstream stream of OpenAI-format SSE events."""

    # Empty, so that a subclass with slots of its own (`HTTPEventStream`'s, one per open
    # stream) has no per-instance dict.
    __slots__ = ()

    @abc.abstractmethod
    async def next_events(self) -> list[bytes] | None:
        """The events completed since the last call (raw bytes, each ending in a blank line);
        None once the upstream has ended the stream. Raises UpstreamFailure."""

    @abc.abstractmethod
    async def aclose(self, *, completed: bool) -> None:
        """Release the upstream response: back to the pool when the stream was read to its
        end, otherwise the connection is dropped so the upstream stops generating."""

    def watch_idle(self, idle_s: float) -> None:  # noqa: B027 - a stream without a socket
        """From now on (the first event has come), a silence longer than `idle_s` fails the
        stream's next read as a `stall` and closes its upstream connection."""

    def exact_usage(self) -> Usage | None:
        """The usage as the upstream counted it, where this stream knows more than its events
        say (a translated stream: Anthropic's cache writes, chat's reasoning tokens, which the
        client's API has no field for); None when its events say it all. Asked once, when the
        stream has ended."""
        return None


class Provider(abc.ABC):
    """A configured upstream. One instance (and one connection pool) per `providers:` entry."""

    # How much of a whole (non-streamed) answer is read: `server.max_answer_mb`, set by the
    # runtime that uses the provider (so a reload applies to providers it keeps).
    max_answer_bytes = 64 << 20

    def __init__(self, name: str) -> None:
        self.name = name

    @abc.abstractmethod
    async def chat(self, call: UpstreamCall) -> JsonAnswer:
        """A non-streaming chat completion."""

    @abc.abstractmethod
    async def chat_stream(self, call: UpstreamCall) -> EventStream:
        """Start a streaming chat completion; returns once the upstream accepted it."""

    @abc.abstractmethod
    async def embeddings(self, call: UpstreamCall) -> JsonAnswer:
        """Embeddings, in the `encoding_format` the body asks for."""

    # How a stream cut short is best continued on this provider: True when a trailing
    # assistant turn is a prefill the model goes on from (Anthropic); False when the partial
    # answer must be sent as an assistant turn with an instruction to continue it.
    continues_by_prefill = False

    # Whether the provider takes an Anthropic Messages body as the client sent it (`anthropic`
    # providers); for the rest the Messages ingress translates to chat.
    speaks_messages = False

    async def messages(self, call: UpstreamCall) -> JsonAnswer:
        """A whole Anthropic message, the upstream's own bytes."""
        raise self._no_messages()

    async def messages_stream(self, call: UpstreamCall) -> EventStream:
        """An Anthropic Messages stream, the upstream's own events."""
        raise self._no_messages()

    async def count_tokens(self, call: UpstreamCall) -> JsonAnswer:
        """Anthropic's count_tokens answer, the upstream's own bytes."""
        raise self._no_messages()

    def _no_messages(self) -> UpstreamFailure:
        return self._not_native("the Anthropic Messages API")

    # Whether the provider takes a legacy Completions body as the client sent it (`openai`
    # providers with `completions: true`); for the rest the Completions ingress translates.
    @property
    def speaks_completions(self) -> bool:
        return False

    async def completions(self, call: UpstreamCall) -> JsonAnswer:
        """A whole legacy `text_completion`, the upstream's own bytes."""
        raise self._not_native("the legacy Completions API")

    async def completions_stream(self, call: UpstreamCall) -> EventStream:
        """A legacy Completions stream, the upstream's own events."""
        raise self._not_native("the legacy Completions API")

    # Whether the provider takes a Responses API body as the client sent it (`openai`
    # providers with `responses: true`); for the rest the Responses ingress translates.
    @property
    def speaks_responses(self) -> bool:
        return False

    async def responses(self, call: UpstreamCall) -> JsonAnswer:
        """A whole Response object, the upstream's own bytes."""
        raise self._not_native("the Responses API")

    async def responses_stream(self, call: UpstreamCall) -> EventStream:
        """A Responses stream, the upstream's own typed events."""
        raise self._not_native("the Responses API")

    def _not_native(self, api: str) -> UpstreamFailure:
        return UpstreamFailure(
            FailureKind.UNSUPPORTED, f"{self.name}: does not speak {api} natively"
        )

    async def aclose(self) -> None:  # noqa: B027 - providers without resources need nothing
        """Close pooled connections."""
