"""Settling a request, however it ended: success, error, refusal, cancellation, disconnect.

Called once from the middleware's `finally`. Everything here is synchronous bookkeeping
(metrics, the usage record handed to a non-blocking recorder, leases and token reservations
given back in memory or queued for Redis); nothing here awaits I/O, so the answer is never held
up by it. Queued settles are sent before the limiter closes at shutdown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.metrics import IN_FLIGHT, NO_MODEL, TTFT, request_series, spend_series
from gateway.pipeline.admission import release_nowait
from gateway.pipeline.context import RequestState
from gateway.pipeline.process import GatewayProcess
from gateway.usage.record import UsageRecord, ts_from_epoch


@dataclass(slots=True)  # not frozen: made for every request (see UsageRecord)
class Tokens:
    prompt: int = 0
    completion: int = 0
    cached: int = 0
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def tokens_of(state: RequestState) -> Tokens:
    """The upstream's own count; for a stream cut before its usage arrived, the estimate of
    what was sent so far (and says so); nothing when no upstream answered."""
    if state.usage is not None:
        usage = state.usage
        return Tokens(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
    if state.first_token_at is not None:
        prompt = state.estimate.prompt if state.estimate is not None else 0
        return Tokens(prompt, state.streamed_events, 0, estimated=True)
    return Tokens()


def feature_label(config: GatewayConfig, feature: str) -> str:
    """Metric label values are bounded: a feature not in `usage.features` counts as other."""
    return feature if feature in config.usage.features else "other"


def cost_usd(config: GatewayConfig, model: str, tokens: Tokens) -> float:
    """USD from the model's price per million tokens; cached input at its own price."""
    if model not in config.models:
        return 0.0
    price = config.models[model].price
    cached = min(tokens.cached, tokens.prompt)
    cached_price = price.cached_input if price.cached_input is not None else price.input
    return (
        (tokens.prompt - cached) * price.input
        + cached * cached_price
        + tokens.completion * price.output
    ) / 1_000_000


def finish(process: GatewayProcess, state: RequestState, status: int) -> None:
    """Account for a finished request; release what it held."""
    if state.holds_process_slot:
        process.in_flight -= 1
        state.holds_process_slot = False
    if state.in_flight_tier is not None:
        IN_FLIGHT.labels(state.in_flight_tier).dec()
        state.in_flight_tier = None
    tokens = tokens_of(state)
    runtime = state.runtime
    if runtime is not None:
        state.runtime = None
        if state.api_call:
            cost = cost_usd(runtime.config, state.model, tokens)
            _observe(runtime.config, state, status, tokens, cost)
            process.usage.record(_record(state, status, tokens, cost), state.started_wall)
        process.request_done(runtime)
    if state.holds:
        holds, state.holds = state.holds, []
        # Given back without awaiting: at once in memory, queued for Redis's next pipeline.
        for hold in holds:
            release_nowait(process, hold, tokens.total)


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
        estimated=tokens.estimated,
    )
