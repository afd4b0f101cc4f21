"""Settling a request, however it ended: success, error, refusal, cancellation, disconnect.

Called once from the middleware's `finally`. Everything here is synchronous bookkeeping
(metrics, the usage record handed to a non-blocking recorder, leases and token reservations
given back in memory or queued for Redis); nothing here awaits I/O, so the answer is never held
up by it. Queued settles are sent before the limiter closes at shutdown.
"""

from __future__ import annotations

import time

from gateway.config import GatewayConfig
from gateway.limits.budgets import to_nano
from gateway.metrics import NO_MODEL, TTFT, request_series, spend_series
from gateway.pipeline.context import RequestState
from gateway.pipeline.cost import Tokens, cost_usd, feature_label, tokens_of
from gateway.pipeline.lease import Outcome
from gateway.pipeline.process import GatewayProcess
from gateway.usage.record import UsageRecord, ts_from_epoch


def finish(process: GatewayProcess, state: RequestState, status: int) -> None:
    """Account for a finished request, then close its lease: everything it held is given
    back (token reservations corrected by the tokens it used), its runtime last."""
    tokens = tokens_of(state)
    runtime = state.runtime
    process.memory.served()
    cost = 0.0
    if runtime is not None and state.api_call:
        if state.recovered is None:
            cost = cost_usd(runtime.config, state.model, tokens)
        else:
            cost = _recovered_cost(runtime.config, state, tokens)
        _observe(runtime.config, state, status, tokens, cost)
        process.usage.record(_record(state, status, tokens, cost), state.started_wall)
    # Given back without awaiting: at once in memory, queued for Redis's next pipeline.
    state.lease.close(Outcome(tokens.total, to_nano(cost) if cost else 0))
    # The attempt loop refers back to the state: without this cycle broken, every request's
    # objects would wait for the cyclic GC (run rarely, server/serving.py) instead of going
    # at once, and a peak of streams would leave the allocator's arenas fragmented.
    state.attempt_loop = None


def _recovered_cost(config: GatewayConfig, state: RequestState, tokens: Tokens) -> float:
    """A continued stream's cost: each failed stream's tokens at its own model's price, the
    rest (the request's tokens count every model's) at the model that finished it. The
    budget reserved at admission may be exceeded by a pricier continuation: what is settled
    is what was spent."""
    assert state.recovered is not None
    cost = 0.0
    rest = Tokens(tokens.prompt, tokens.completion, tokens.cached, estimated=tokens.estimated)
    for segment in state.recovered:
        used = Tokens(segment.usage.prompt_tokens, segment.usage.completion_tokens)
        cost += cost_usd(config, segment.model, used)
        rest.prompt = max(0, rest.prompt - used.prompt)
        rest.completion = max(0, rest.completion - used.completion)
    rest.cache_write, rest.reasoning = tokens.cache_write, tokens.reasoning
    return cost + cost_usd(config, state.model, rest)


def _observe(
    config: GatewayConfig, state: RequestState, status: int, tokens: Tokens, cost: float
) -> None:
    elapsed = time.perf_counter() - state.started
    model = state.model or NO_MODEL
    feature = feature_label(config, state.feature)
    series = request_series(state.tier, model, feature, status, state.stream)
    series.requests.inc()
    series.duration.observe(elapsed)
    series.overhead.observe(max(0.0, elapsed - state.upstream_wait_s))
    if state.first_token_at is not None:
        TTFT.labels(state.tier, model).observe(state.first_token_at - state.started)
    if state.model and tokens.total:
        spend = spend_series(feature, model)
        spend.prompt.inc(tokens.prompt)
        spend.completion.inc(tokens.completion)
        if tokens.cached:
            spend.cached.inc(tokens.cached)
        spend.cost.inc(cost)


def _record(state: RequestState, status: int, tokens: Tokens, cost: float) -> UsageRecord:
    now = time.perf_counter()
    ttft = state.first_token_at
    return UsageRecord(
        ts=ts_from_epoch(state.started_wall),
        request_id=state.request_id,
        key=state.principal.name if state.principal else None,
        user=state.user,
        feature=state.feature,
        conversation=state.conversation,
        tier=state.tier,
        model=state.model or None,
        provider=state.provider or None,
        stream=state.stream,
        status=status,
        prompt_tokens=tokens.prompt,
        completion_tokens=tokens.completion,
        cached_tokens=tokens.cached,
        cost_usd=round(cost, 10),
        latency_ms=round((now - state.started) * 1000, 3),
        ttft_ms=round((ttft - state.started) * 1000, 3) if ttft is not None else None,
        attempts=state.attempts,
        error=state.error,
        cut=state.stream_cut,
        # A continued stream's failed part never had its usage reported: estimated.
        estimated=tokens.estimated or state.recovered is not None,
        api=state.api,
        cache_write_tokens=tokens.cache_write,
        reasoning_tokens=tokens.reasoning,
        cache=state.cache,
        saved_usd=round(state.saved_usd, 10),
        recovered=state.recovered is not None,
        recovered_from=(
            None if state.recovered is None else [s.describe() for s in state.recovered]
        ),
    )
