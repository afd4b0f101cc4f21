"""Settling a request, however it ended: success, error, refusal, cancellation, disconnect.

Called once from the middleware's `finally`. Everything here is synchronous bookkeeping
(metrics, counters); what needs I/O (giving leases back, correcting token reservations) runs in
the background so the answer is never held up by it, and is awaited at shutdown.
"""

from __future__ import annotations

import time

from gateway.admission import Hold, release
from gateway.config import GatewayConfig
from gateway.context import RequestState
from gateway.metrics import (
    COST,
    DURATION,
    IN_FLIGHT,
    NO_MODEL,
    OVERHEAD,
    REQUESTS,
    TOKENS,
    TTFT,
)
from gateway.process import GatewayProcess


def feature_label(config: GatewayConfig, feature: str) -> str:
    """Metric label values are bounded: a feature not in `usage.features` counts as other."""
    return feature if feature in config.usage.features else "other"


def cost_usd(config: GatewayConfig, state: RequestState) -> float:
    if state.usage is None or state.model not in config.models:
        return 0.0
    price = config.models[state.model].price
    usage = state.usage
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_price = price.cached_input if price.cached_input is not None else price.input
    return (
        (usage.prompt_tokens - cached) * price.input
        + cached * cached_price
        + usage.completion_tokens * price.output
    ) / 1_000_000


def finish(process: GatewayProcess, state: RequestState, status: int) -> None:
    """Account for a finished request; release what it held."""
    state.status = status
    if state.holds_process_slot:
        process.in_flight -= 1
        state.holds_process_slot = False
    if state.in_flight_tier is not None:
        IN_FLIGHT.labels(state.in_flight_tier).dec()
        state.in_flight_tier = None
    runtime = state.runtime
    if runtime is not None:
        state.runtime = None
        if state.api_call:
            _observe(runtime.config, state, status)
        process.request_done(runtime)
    if state.holds:
        holds, state.holds = state.holds, []
        process.in_background(_release_all(process, holds, state.actual_tokens()))


def _observe(config: GatewayConfig, state: RequestState, status: int) -> None:
    elapsed = time.perf_counter() - state.started
    model = state.model or NO_MODEL
    feature = feature_label(config, state.feature)
    REQUESTS.labels(state.tier, model, feature, str(status)).inc()
    DURATION.labels(state.tier, model, str(state.stream).lower()).observe(elapsed)
    if state.first_token_at is not None:
        TTFT.labels(state.tier, model).observe(state.first_token_at - state.started)
    OVERHEAD.labels(str(state.stream).lower()).observe(max(0.0, elapsed - state.upstream_wait_s))
    if state.usage is not None and state.model:
        TOKENS.labels(feature, model, "prompt").inc(state.usage.prompt_tokens)
        TOKENS.labels(feature, model, "completion").inc(state.usage.completion_tokens)
        TOKENS.labels(feature, model, "cached").inc(state.usage.cached_tokens)
        COST.labels(feature, model).inc(cost_usd(config, state))


async def _release_all(process: GatewayProcess, holds: list[Hold], tokens: int) -> None:
    for hold in holds:
        await release(process, hold, tokens)
