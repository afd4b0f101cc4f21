"""Per-request state: who and what a call is for, and what happened to it.

`RequestState` lives from the first middleware to the last line of the access log; the
response headers (`x-request-id`, `x-gateway-*`) and, in later stages, the usage record are
read from it.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gateway.pipeline.auth import Principal
from gateway.pipeline.lease import RequestLease
from gateway.providers.base import Usage

if TYPE_CHECKING:
    from gateway.errors import UpstreamFailure
    from gateway.pipeline.cache_plan import CachePlan
    from gateway.pipeline.runtime import Runtime
    from gateway.tokens import TokenEstimate

SERVER = "llm-gateway"  # replaces aiohttp's own Server header, and any upstream's
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


# New ids: a random per-process prefix and a counter. Unique across replicas without a
# random draw (a syscall) per request.
_ID_PREFIX = f"req_{os.urandom(6).hex()}"
_id_counter = itertools.count(1)


def request_id_from(header: str | None) -> str:
    """The client's own request id when it is sane, else a new one."""
    if header and _SAFE_REQUEST_ID.match(header):
        return header
    return f"{_ID_PREFIX}{next(_id_counter):010x}"


class FailureNoter(Protocol):
    """What notes a failed attempt (`pipeline.attempts.AttemptLoop`)."""

    async def note_failure(self, model: str, failure: UpstreamFailure) -> None: ...


@dataclass(slots=True)
class Segment:
    """A stream that failed after writing part of an answer which another model continued
    (`pipeline.midstream`): its model, why it failed, and what it used (estimated: a failed
    stream never reports its usage)."""

    model: str
    reason: str
    usage: Usage

    def describe(self) -> str:
        return f"{self.model}: {self.reason}"


@dataclass(slots=True)
class RequestState:
    """What the gateway knows and decides about one request."""

    request_id: str
    api: str = "chat"  # the API the client spoke: chat, embeddings, messages, ...
    started: float = field(default_factory=time.perf_counter)
    started_wall: float = field(default_factory=time.time)
    principal: Principal | None = None
    feature: str = "unknown"
    user: str | None = None
    conversation: str | None = None
    tier: str = ""
    model: str = ""
    provider: str = ""
    attempts: int = 0
    stream: bool = False
    usage: Usage | None = None
    first_token_at: float | None = None
    error: str | None = None  # why the request failed or ended early
    stream_cut: bool = False  # a stream that ended before the upstream finished it
    # Keep-alives began before any model gave a first event: the headers went out before the
    # answering model was known.
    committed_before_answer: bool = False
    answer_started: bool = False  # a stream's headers went out: no other answer can follow
    estimate: TokenEstimate | None = None  # set once the request is routed
    streamed_events: int = 0  # data events relayed: the completion count of a cut stream
    upstream_wait_s: float = 0.0  # time spent waiting on upstreams, for the overhead metric
    # What the request holds, each with its give-back; closed when the request settles.
    lease: RequestLease = field(default_factory=RequestLease)
    ratelimit_headers: dict[str, str] = field(default_factory=dict)
    cors_headers: dict[str, str] | None = None  # set by the middleware when CORS is on
    runtime: Runtime | None = None  # the runtime this request started on, to its end
    api_call: bool = False  # a /v1 call that counts in the request metrics
    # The response cache (only with a `cache:` section): hit, miss or bypass; what a hit
    # saved; what the cache does for this request; a stream's events, kept to be stored.
    cache: str | None = None
    saved_usd: float = 0.0
    cache_plan: CachePlan | None = None
    cache_events: list[bytes] | None = None
    # The attempt loop of an admitted request: a stream's failure after its first event is
    # still an attempt that failed (logged, counted, toward the model's cooldown).
    attempt_loop: FailureNoter | None = None
    # Streams continued on another model (`routing.midstream: continue`), oldest first; None
    # (not an empty list) for the common request that needed none.
    recovered: list[Segment] | None = None

    def stamp(self, headers: MutableMapping[str, str]) -> None:
        """Write the headers every answer carries: the request id, where it went, the key's
        rate-limit state. Called on each answer just before it is sent."""
        unknown = self.committed_before_answer
        headers["x-request-id"] = self.request_id
        if self.api == "messages":
            headers["request-id"] = self.request_id  # where the anthropic SDKs look for it
        headers["x-gateway-tier"] = self.tier
        headers["x-gateway-model"] = "" if unknown else self.model
        headers["x-gateway-attempts"] = "" if unknown else str(self.attempts)
        if self.ratelimit_headers:
            headers.update(self.ratelimit_headers)
        if self.cors_headers:
            headers.update(self.cors_headers)
        if self.cache is not None:
            headers["x-gateway-cache"] = self.cache
        headers["Server"] = SERVER

    def waiting_upstream(self) -> UpstreamWait:
        """`with state.waiting_upstream():` time spent inside is the upstream's, not the
        gateway's own overhead."""
        return UpstreamWait(self)


class UpstreamWait:
    """A class, not a generator-based context manager: it wraps every upstream call."""

    __slots__ = ("_started", "_state")

    def __init__(self, state: RequestState) -> None:
        self._state = state
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._state.upstream_wait_s += time.perf_counter() - self._started


def apply_request_context(
    state: RequestState, principal: Principal, headers: Mapping[str, str], body: dict[str, Any]
) -> None:
    """Fill feature, user and conversation; remove gateway-only fields from `body`.

    Feature: `X-Gateway-Feature`, else `metadata.feature`, else the key's `feature`, else
    `unknown`. User: `X-Gateway-User`, else the body's `user` (which is an OpenAI field and
    stays in the body).
    """
    metadata = body.get("metadata")
    body_feature = None
    if isinstance(metadata, dict) and "feature" in metadata:
        rest = {k: v for k, v in metadata.items() if k != "feature"}
        body_feature = metadata["feature"]
        if rest:
            body["metadata"] = rest
        else:
            del body["metadata"]
    feature = _header_text(headers, "x-gateway-feature") or body_feature or principal.feature
    state.feature = str(feature) if feature else "unknown"
    user = _header_text(headers, "x-gateway-user") or body.get("user")
    state.user = str(user) if user else None
    state.conversation = _header_text(headers, "x-gateway-conversation") or None
    if state.runtime is not None and state.runtime.config.cache is not None:
        from gateway.pipeline.cache_plan import read_cache_headers  # only with a cache

        state.cache_plan = read_cache_headers(headers)


def _header_text(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value as text that can be written anywhere. aiohttp keeps bytes that are not
    UTF-8 as lone surrogates, which no JSON encoder (log line, usage record) will write; they
    become U+FFFD here, once, instead of failing every writer downstream."""
    value = headers.get(name)
    if not value or value.isascii():
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")  # the bytes as they came
    except UnicodeEncodeError:  # a surrogate not from an undecodable byte
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")
