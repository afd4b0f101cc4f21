"""The exact response cache in the pipeline: the key of a request, the lookup at admission
(a hit is answered at once, without any upstream call), one upstream call for concurrent
identical misses, and storing an answer once it was sent whole.

The key is a digest of the ingress API, the resolved route (tier and chain), the scope (the
key's name under `scope: key`) and the client's body with its keys sorted; gateway-only fields
(`metadata.feature`) are gone from the body by then, and the request context (feature, user,
conversation headers) is not part of it. `stream` is in the body, so a stream and a whole
answer are separate entries: each is replayed in exactly the shape it was sent.

Nothing here runs without a `cache:` section: the request path then pays one None check.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from gateway.metrics import CACHE_REQUESTS
from gateway.pipeline.cache_plan import CachePlan, ResponseCache
from gateway.pipeline.context import RequestState
from gateway.providers.base import Usage
from gateway.store.cache import CachedAnswer

if TYPE_CHECKING:
    from gateway.pipeline.routing import Route
    from gateway.pipeline.runtime import Runtime


class CacheHit(Exception):
    """Raised by `admit` when the cache has the answer; the HTTP layer writes it."""

    def __init__(self, answer: CachedAnswer) -> None:
        super().__init__("answered from the response cache")
        self.answer = answer


def cache_key(api: str, route: Route, scope: str, body: Mapping[str, Any], vary: str) -> str | None:
    """The digest of everything that decides the answer; None for a body that cannot be
    made canonical (an integer past 64 bits, say): such a request is not cached."""
    try:
        canonical = orjson.dumps(
            [api, route.tier, list(route.chain), scope, vary, body], option=orjson.OPT_SORT_KEYS
        )
    except orjson.JSONEncodeError:
        return None
    return hashlib.sha256(canonical).hexdigest()


def _count(state: RequestState, result: str) -> None:
    state.cache = result
    CACHE_REQUESTS.labels(state.api, result).inc()


async def look_up(
    cache: ResponseCache,
    runtime: Runtime,
    state: RequestState,
    route: Route,
    body: Mapping[str, Any],
    *,
    vary: str,
    cacheable: bool,
) -> CachedAnswer | None:
    """The cached answer for this request, or None (then the request goes upstream, and
    `state.cache_plan` says whether its answer is to be stored). Waits, up to the route's
    first model's total timeout, for an identical request already fetching its answer."""
    config = runtime.config.cache
    plan: CachePlan | None = state.cache_plan
    if config is None or plan is None or not cacheable or state.principal is None:
        state.cache_plan = None
        _count(state, "bypass")
        return None
    scope = state.principal.name if config.scope == "key" else ""
    key = cache_key(state.api, route, scope, body, vary)
    if key is None:
        state.cache_plan = None
        _count(state, "bypass")
        return None
    plan.key = key
    plan.cache = cache
    plan.ttl_s = min(plan.ttl_s, config.ttl_s) if plan.ttl_s is not None else config.ttl_s
    if not plan.lookup:
        _count(state, "bypass")
        _lead_or_store_only(cache, state, plan)
        return None
    deadline = time.monotonic() + _timeout_s(runtime, route.chain)
    while True:
        answer = await cache.backend.get(key)
        if answer is not None and answer.stream == state.stream:
            return _hit(state, answer)
        if not cache.backend.available:
            state.cache_plan = None  # the cache is skipped while its Redis is down
            _count(state, "bypass")
            return None
        flight = cache.flights.get(key)
        remaining = deadline - time.monotonic()
        if flight is None or not plan.store or remaining <= 0:
            _count(state, "miss")
            _lead_or_store_only(cache, state, plan)
            return None
        try:
            with state.waiting_upstream():  # waiting on another request's upstream call
                answer = await asyncio.wait_for(asyncio.shield(flight), remaining)
        except TimeoutError:
            answer = None
            deadline = 0.0  # waited long enough: go upstream now
        if answer is not None:
            return _hit(state, answer)
        # The request led failed or did not store: look again, and lead if nobody does.


def _timeout_s(runtime: Runtime, chain: Sequence[str]) -> float:
    return float(runtime.config.models[chain[0]].timeout.total) if chain else 60.0


def _lead_or_store_only(cache: ResponseCache, state: RequestState, plan: CachePlan) -> None:
    if not plan.store:
        state.cache_plan = None
        return
    if plan.key not in cache.flights:
        plan.flight = cache.flights[plan.key] = asyncio.get_running_loop().create_future()
    # However the request ends, whoever waits on it is woken.
    state.lease.take(lambda _: plan.publish(None))
    if state.stream:
        state.cache_events = []


def _hit(state: RequestState, answer: CachedAnswer) -> CachedAnswer:
    _count(state, "hit")
    state.cache_plan = None
    state.model = answer.model
    state.provider = answer.provider
    state.saved_usd = answer.cost_usd
    state.usage = Usage()  # no upstream tokens: nothing counts against tpm or budgets
    return answer


async def store(state: RequestState, status: int, body: bytes | None, cost_usd: float) -> None:
    """Store what the request answered, if it was whole and successful: a JSON `body`, or
    the stream's events captured as they were written. Requests waiting on it get it first."""
    plan = state.cache_plan
    if plan is None or plan.cache is None:
        return
    state.cache_plan = None
    answer: CachedAnswer | None = None
    if status == 200 and state.model and state.error is None:
        events = state.cache_events
        if not state.stream:
            if body is not None:
                answer = CachedAnswer(state.model, state.provider, cost_usd, body=body)
        elif events and not state.stream_cut and state.recovered is None:
            # A recovered stream is spliced from several models' answers: never stored.
            answer = CachedAnswer(state.model, state.provider, cost_usd, events=tuple(events))
    state.cache_events = None
    if answer is not None and answer.size > plan.cache.max_entry_bytes:
        answer = None
    plan.publish(answer)
    if answer is not None and plan.ttl_s is not None:
        await plan.cache.backend.put(plan.key, answer, plan.ttl_s)
