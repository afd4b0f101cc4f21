"""The attempt loop: down a route's chain with retries, backoff, fallbacks and cooldowns.

Each model of the chain is tried in order, skipping models that are cooling down (unless all
of them are: then the least recently failed one is tried anyway). A failure whose kind is in
`routing.fallback_on` is retried on the same model `routing.retries` times with exponential
backoff and full jitter (a short upstream `retry-after` is honoured; a long one moves on at
once), then the request falls back to the next model. Any other failure (the upstream refused
the request itself) goes straight back to the client: the next model would refuse it too.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from gateway.config import GatewayConfig
from gateway.errors import (
    AllModelsFailed,
    GatewayError,
    RateLimited,
    UpstreamFailure,
    retry_headers,
)
from gateway.failures import FailureKind
from gateway.limits.cooldowns import HEALTHY, CooldownStore, ModelHealth
from gateway.metrics import FALLBACKS, MODEL_AVAILABLE, UPSTREAM_ERRORS
from gateway.pipeline.context import RequestState
from gateway.pipeline.routing import Route

if TYPE_CHECKING:
    from gateway.pipeline.admission import ModelGate

log = logging.getLogger("gateway.attempts")

T = TypeVar("T")

BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 2.0
RETRY_AFTER_MAX_WAIT_S = 2.0  # a longer upstream retry-after moves on to the next model


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at one model, or one model skipped, and why."""

    model: str
    reason: str  # a failure kind, or "cooldown" for a model skipped while cooling down
    status: int | None = None
    message: str = ""
    retry_after: float | None = None

    def describe(self) -> str:
        status = f", upstream status {self.status}" if self.status is not None else ""
        return f"{self.model}: {self.reason}{status}"


def backoff_delay(retry_number: int, retry_after: float | None) -> float | None:
    """Seconds to wait before retry number `retry_number` (0-based); None: don't retry."""
    if retry_after is not None:
        return retry_after if retry_after <= RETRY_AFTER_MAX_WAIT_S else None
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**retry_number))


class AttemptLoop:
    """Runs one request's attempts down its chain. `attempt(model_name)` does one upstream
    call and raises UpstreamFailure when it fails."""

    def __init__(
        self,
        config: GatewayConfig,
        cooldowns: CooldownStore,
        state: RequestState,
        route: Route,
        provider_of: Callable[[str], str],
        gate: ModelGate,
    ) -> None:
        self.config = config
        self.cooldowns = cooldowns
        self.state = state
        self.route = route
        self.provider_of = provider_of
        self.gate = gate
        self.attempts: list[Attempt] = []
        self.last_unsupported: UpstreamFailure | None = None

    async def _health(self) -> dict[str, ModelHealth]:
        try:
            return await self.cooldowns.health(self.route.chain)
        except Exception:
            # Cooldowns only steer; without them every model is simply tried.
            log.warning("cooldown state unavailable", exc_info=True)
            return {}

    def candidates(self, health: dict[str, ModelHealth]) -> list[str]:
        chain = list(self.route.chain)
        ready = [m for m in chain if not health.get(m, HEALTHY).cooling]
        for model in chain:
            if model not in ready:
                self.attempts.append(Attempt(model, "cooldown"))
        if not ready:
            # Everything is cooling down: failing outright helps nobody, so the model whose
            # last failure is oldest (the likeliest to have recovered) is tried anyway.
            ready = [min(chain, key=lambda m: health.get(m, HEALTHY).last_failure)]
        return ready

    async def run(self, attempt: Callable[[str], Awaitable[T]]) -> T:
        routing = self.config.routing
        health = await self._health()
        candidates = self.candidates(health)
        for index, model in enumerate(candidates):
            if index:
                previous = self.attempts[-1]
                FALLBACKS.labels(self.route.tier, previous.model, model, previous.reason).inc()
            if not await self.gate.take(model):
                self.attempts.append(
                    Attempt(model, "saturated", retry_after=self.gate.waits.get(model))
                )
                continue
            for retry in range(routing.retries + 1):
                self.state.attempts += 1
                self.state.model = model
                self.state.provider = self.provider_of(model)
                try:
                    result = await attempt(model)
                except UpstreamFailure as failure:
                    policy = failure.kind.policy
                    if policy.skips_model:
                        # Refused before anything was sent: no upstream attempt, no sign of
                        # ill health; another model of the chain may serve the request.
                        self.state.attempts -= 1
                        self.attempts.append(
                            Attempt(model, failure.kind, failure.status, failure.message)
                        )
                        self.last_unsupported = failure
                        break
                    fallback_class = await self._note_failure(model, failure)
                    if fallback_class not in routing.fallback_on:
                        raise failure.to_client_error() from failure
                    if not policy.retried or retry == routing.retries:
                        break
                    delay = backoff_delay(retry, failure.retry_after)
                    if delay is None:
                        break
                    with self.state.waiting_upstream():  # not the gateway's own time
                        await asyncio.sleep(delay)
                    continue
                if health.get(model, HEALTHY).failures or retry:
                    # Only a model with a failure streak has anything to reset: the common
                    # case costs the store nothing.
                    await self._record_success(model)
                return result
            await self.gate.give_back(model)
        raise self._chain_error()

    async def _record_success(self, model: str) -> None:
        try:
            await self.cooldowns.record_success(model)
        except Exception:
            log.warning("cooldown state unavailable", exc_info=True)
        MODEL_AVAILABLE.labels(model).set(1)

    def continuation_candidates(self, failed: str) -> list[str]:
        """Where a stream that failed at `failed` after its first event may go on: the models
        after it in the chain, else (it was the last) the same model again."""
        chain = self.route.chain
        after = list(chain[chain.index(failed) + 1 :]) if failed in chain else []
        return after or [failed]

    async def note_failure(self, model: str, failure: UpstreamFailure) -> None:
        """A failure outside the attempt loop (a stream's, after its first event): logged,
        counted and toward the model's cooldown like any other attempt's. Once only."""
        if not failure.noted:
            await self._note_failure(model, failure)

    async def _note_failure(self, model: str, failure: UpstreamFailure) -> str | None:
        policy = failure.kind.policy
        failure.noted = True
        attempt = Attempt(model, failure.kind, failure.status, failure.message, failure.retry_after)
        self.attempts.append(attempt)
        provider = self.provider_of(model)
        UPSTREAM_ERRORS.labels(provider, model, failure.kind).inc()
        log.warning(
            "upstream attempt failed",
            extra={
                "request_id": self.state.request_id,
                "model": model,
                "provider": provider,
                "reason": failure.kind,
                "upstream_status": failure.status,
                "attempt": self.state.attempts,
                "error": failure.message,
            },
        )
        # Only failures of the upstream's health count toward a cooldown.
        if policy.cools_down:
            cooldown = self.config.routing.cooldown
            try:
                started = await self.cooldowns.record_failure(
                    model, cooldown.failures, cooldown.seconds
                )
            except Exception:
                log.warning("cooldown state unavailable", exc_info=True)
                started = False
            if started:
                MODEL_AVAILABLE.labels(model).set(0)
                log.warning(
                    "model cooling down", extra={"model": model, "seconds": cooldown.seconds}
                )
        self.state.error = failure.message
        return policy.fallback_class

    def _chain_error(self) -> GatewayError:
        tried = [a for a in self.attempts if a.reason != "cooldown"]
        listing = "; ".join(a.describe() for a in self.attempts)
        if self.last_unsupported is not None and all(
            a.reason == FailureKind.UNSUPPORTED for a in tried
        ):
            # No model of the chain can serve this request as asked: the client must change it.
            return self.last_unsupported.to_client_error()
        if tried and all(a.reason == "saturated" for a in tried):
            return self.gate.capacity_error()
        if tried and all(a.reason == FailureKind.RATE_LIMITED for a in tried):
            waits = [a.retry_after for a in tried if a.retry_after is not None]
            headers = {}
            if waits:
                wait = min(waits)
                headers = retry_headers(wait)
            return RateLimited(
                f"Every model of '{self.route.name}' is rate limited upstream ({listing}).",
                code="upstream_rate_limited",
                headers=headers,
            )
        if len(self.route.chain) == 1 and tried:
            # No fallback was possible: the upstream's own failure says most.
            last = tried[-1]
            error = UpstreamFailure(
                FailureKind(last.reason),
                last.message,
                status=last.status,
                retry_after=last.retry_after,
            ).to_client_error()
            if len(tried) > 1:
                error.message += f" (attempts: {listing})"
            return error
        return AllModelsFailed(f"Every model of '{self.route.name}' failed. Attempts: {listing}.")
