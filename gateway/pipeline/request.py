"""The seam every ingress API uses: begin a request, route and admit it, call the models.

An ingress module (one per API a client speaks) parses and validates the client's body,
turns it into the canonical request the pipeline carries (an OpenAI chat or embeddings body),
and calls, in order:

    runtime, principal = begin(process, state, authorization, api_key, api_call=True)
    ... read and check the body, apply_request_context(state, principal, headers, body) ...
    call = await admit(process, runtime, state, principal, body["model"], body, completion=True)
    answer = await call.chat(body)           # or call.chat_stream(body), call.embeddings(body)

then writes the answer (or relays the stream) in its client's API. Routing, retries, fallback,
cooldowns, key and model limits, timeouts, usage and metrics all happen below this seam, the
same for every API. Nothing here touches HTTP.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from gateway.metrics import IN_FLIGHT, GaugeValue
from gateway.pipeline.admission import ModelGate, admit_key, take_process_slot
from gateway.pipeline.attempts import AttemptLoop
from gateway.pipeline.auth import Principal
from gateway.pipeline.cache import CacheHit, look_up
from gateway.pipeline.context import RequestState
from gateway.pipeline.lease import GiveBack
from gateway.pipeline.midstream import ContinuingStream
from gateway.pipeline.process import GatewayProcess
from gateway.pipeline.runtime import Runtime
from gateway.providers.base import JsonAnswer, Provider, UpstreamCall
from gateway.providers.upstream import OpenedStream, open_stream
from gateway.tokens import TokenEstimate

T = TypeVar("T")
NO_ESTIMATE = TokenEstimate({}, completion=False)  # a cache hit reserves nothing


def begin(
    process: GatewayProcess,
    state: RequestState,
    authorization: str | None,
    api_key: str | None,
    *,
    api_call: bool,
) -> tuple[Runtime, Principal]:
    """Take this request's runtime snapshot (to its end) and authenticate the caller. An API
    call (one that goes upstream) takes a slot under `server.max_concurrent` when admitted."""
    runtime = process.current
    state.runtime = runtime
    runtime.enter()
    state.lease.take(process.request_done_give_back(runtime))
    state.api_call = api_call
    principal = runtime.auth.authenticate(authorization, api_key)
    state.principal = principal
    return runtime, principal


async def admit(
    process: GatewayProcess,
    runtime: Runtime,
    state: RequestState,
    principal: Principal,
    requested_model: object,
    body: dict[str, Any],
    *,
    completion: bool,
    cache_body: Mapping[str, Any] | None = None,
    cache_vary: str = "",
    cacheable: bool = True,
) -> ModelCall:
    """Route the request, count it in flight, admit it under the key's plan (reserving its
    token estimate when a tpm limit applies), and give back the call that runs the attempts
    (each model's own limits are asked as it is tried).

    With a response cache, the answer is looked up first, under `cache_body` (the client's
    own body, when `body` is a translation of it; default `body`) and `cache_vary` (what
    else decides the answer, such as a forwarded header); a hit is admitted under the key's
    rpm and concurrency only and raises `CacheHit`, which the HTTP layer answers."""
    if state.api_call:
        # Taken only now, with the body read: a slow client holds no slot while it sends.
        take_process_slot(process, runtime, state)
    route = runtime.router.resolve(requested_model, principal)
    state.tier = route.tier
    in_flight, give_back = _in_flight_of(route.tier)
    in_flight.inc()
    state.lease.take(give_back)
    if runtime.config.cache is not None:
        hit = await look_up(
            process.response_cache(runtime.config.cache),
            runtime,
            state,
            route,
            body if cache_body is None else cache_body,
            vary=cache_vary,
            cacheable=cacheable,
        )
        if hit is not None:
            await admit_key(process, runtime, state, NO_ESTIMATE, route.chain, cache_hit=True)
            raise CacheHit(hit)
    state.estimate = estimate = TokenEstimate(body, completion=completion)
    await admit_key(process, runtime, state, estimate, route.chain)
    attempts = AttemptLoop(
        runtime.config,
        process.cooldowns,
        state,
        route,
        runtime.provider_of,
        gate=ModelGate(process, runtime, state, estimate),
    )
    state.attempt_loop = attempts
    return ModelCall(runtime, state, attempts)


# Per tier: its in-flight gauge and the give-back that lowers it, made once (a stream keeps
# its lease, and so every give-back on it, while it lasts). Tiers are the config's.
_IN_FLIGHT: dict[str, tuple[GaugeValue, GiveBack]] = {}


def _in_flight_of(tier: str) -> tuple[GaugeValue, GiveBack]:
    found = _IN_FLIGHT.get(tier)
    if found is None:
        gauge = IN_FLIGHT.labels(tier)
        found = _IN_FLIGHT[tier] = (gauge, lambda _: gauge.dec())
    return found


class ModelCall:
    """One admitted request: runs its attempts down the route's chain, each one a call to a
    model with the body's `model` replaced by that model's upstream id."""

    __slots__ = ("attempts", "runtime", "state")

    def __init__(self, runtime: Runtime, state: RequestState, attempts: AttemptLoop) -> None:
        self.runtime = runtime
        self.state = state
        self.attempts = attempts

    def upstream_call(
        self,
        model_name: str,
        body: dict[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamCall:
        """The call to `model_name`: `body` with its `model` replaced by the upstream's own id
        (a new dict: the call's own), under the model's timeouts."""
        config = self.runtime.config
        call = UpstreamCall(
            model_name,
            config.models[model_name].timeout,
            {**body, "model": config.upstream_id(model_name)},
            self.state.request_id,
        )
        if headers:
            call.headers = headers
        return call

    def provider_for(self, model_name: str) -> Provider:
        return self.runtime.provider_for(model_name)

    # The methods below hand back the attempt loop's own coroutine rather than awaiting it
    # in one of their own: one coroutine layer less on every request.

    def run(self, attempt: Callable[[str], Awaitable[T]]) -> Awaitable[T]:
        """Run `attempt(model_name)` down the chain: for an ingress whose calls differ by
        model (native to some providers, translated for others)."""
        return self.attempts.run(attempt)

    def chat(self, body: dict[str, Any]) -> Awaitable[JsonAnswer]:
        """A whole chat completion; its usage goes on the request state."""
        state = self.state
        provider_for = self.runtime.provider_for

        async def attempt(model_name: str) -> JsonAnswer:
            with state.waiting_upstream():
                answer = await provider_for(model_name).chat(self.upstream_call(model_name, body))
            state.usage = answer.usage
            return answer

        return self.attempts.run(attempt)

    def chat_stream(self, body: dict[str, Any]) -> Awaitable[OpenedStream]:
        """A chat stream from the first model that gives a first event. The caller relays it
        (and the time it waits here counts as the upstream's)."""
        if self.runtime.config.routing.midstream == "continue":
            return self.attempts.run(lambda model_name: self.open_chat_stream(model_name, body))
        provider_for = self.runtime.provider_for

        def attempt(model_name: str) -> Awaitable[OpenedStream]:
            return open_stream(provider_for(model_name), self.upstream_call(model_name, body))

        return self.attempts.run(attempt)

    async def open_chat_stream(
        self,
        model_name: str,
        body: dict[str, Any],
        body_for: Callable[[str], dict[str, Any]] | None = None,
    ) -> OpenedStream:
        """One attempt's chat stream at `model_name`, for an ingress that translates it (or
        relays it). With `routing.midstream: continue` it is a `ContinuingStream`, which goes
        on with the next model (asked with `body_for(model)`, default `body`) when the stream
        fails after its first event."""
        opened = await open_stream(
            self.runtime.provider_for(model_name), self.upstream_call(model_name, body)
        )
        if self.runtime.config.routing.midstream != "continue":
            return opened
        estimate = self.state.estimate.prompt if self.state.estimate is not None else 0
        stream = ContinuingStream(
            self, model_name, body_for or (lambda _model: body), opened[0], estimate
        )
        return stream, stream.first(opened[1])

    def embeddings(self, body: dict[str, Any]) -> Awaitable[JsonAnswer]:
        state = self.state
        provider_for = self.runtime.provider_for

        async def attempt(model_name: str) -> JsonAnswer:
            with state.waiting_upstream():
                call = self.upstream_call(model_name, body)
                answer = await provider_for(model_name).embeddings(call)
            state.usage = answer.usage
            return answer

        return self.attempts.run(attempt)
