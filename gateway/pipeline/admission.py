"""Admission: whether a request may go on, under the process's, the key's and a model's limits.

A refused request never reaches an upstream. Every admission taken registers its own give-back
on the request's lease (`RequestLease`), so it is released when the request settles, whatever
way it ends. When the limits
backend cannot be asked, `limits.on_backend_error` decides: `allow` serves (and counts it),
`deny` answers 503.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from gateway.errors import GatewayError, RateLimited, ServiceUnavailable, retry_headers
from gateway.limits.base import Admission, LimiterUnavailable, LimitSpec
from gateway.metrics import BUDGET_REFUSALS, LIMITER_ERRORS, RATE_LIMITED
from gateway.pipeline.budgets import (
    budget_charges,
    budget_exhausted,
    remaining_headers,
    worst_case_cost,
)
from gateway.pipeline.context import RequestState
from gateway.pipeline.lease import GiveBack, Outcome
from gateway.pipeline.process import GatewayProcess
from gateway.pipeline.runtime import Runtime
from gateway.tokens import TokenEstimate

log = logging.getLogger("gateway.admission")

CONCURRENCY_RETRY_S = 1.0


class Hold:
    """An admission held by a request, and itself its give-back on the request's lease: the
    concurrency lease is dropped and the reservations settled to what the request used. One
    object, not a closure around one, for every limited request."""

    __slots__ = ("admission", "process", "subject")

    def __init__(self, process: GatewayProcess, subject: str, admission: Admission) -> None:
        self.process = process
        self.subject = subject
        self.admission = admission

    def __call__(self, outcome: Outcome) -> None:
        """`release` without awaiting: the limiter settles at once or queues it."""
        process, admission = self.process, self.admission
        if admission.lease_id is not None:
            process.leases.drop(self.subject, admission.lease_id)
        process.limiter.settle_nowait(self.subject, admission, outcome.tokens, outcome.cost)


def format_reset(seconds: float) -> str:
    """OpenAI's duration style for x-ratelimit-reset-*: `20ms`, `1s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


# `format_reset` of whole seconds, which is what a reset of a second or more rounds to: a
# limited key's every answer carries one or two, nearly always the same few (`1m0s`). Filled
# as they come: at most one per whole second up to the longest window.
_RESET_TEXTS: dict[int, str] = {}


def _reset_text(seconds: float) -> str:
    if seconds < 1:
        return format_reset(seconds)
    whole = math.ceil(seconds)
    text = _RESET_TEXTS.get(whole)
    if text is None:
        text = format_reset(float(whole))
        if len(_RESET_TEXTS) < 4096:
            _RESET_TEXTS[whole] = text
    return text


def ratelimit_headers(admission: Admission) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the limits the admission was judged under."""
    headers: dict[str, str] = {}
    limit = admission.requests_limit
    if limit is not None:
        remaining = admission.requests_remaining or 0
        headers["x-ratelimit-limit-requests"] = str(limit)
        headers["x-ratelimit-remaining-requests"] = str(remaining if remaining > 0 else 0)
        headers["x-ratelimit-reset-requests"] = _reset_text(admission.requests_reset_s or 0.0)
    limit = admission.tokens_limit
    if limit is not None:
        remaining = admission.tokens_remaining or 0
        headers["x-ratelimit-limit-tokens"] = str(limit)
        headers["x-ratelimit-remaining-tokens"] = str(remaining if remaining > 0 else 0)
        headers["x-ratelimit-reset-tokens"] = _reset_text(admission.tokens_reset_s or 0.0)
    return headers


_MESSAGES = {
    "requests": "Rate limit reached for requests per minute",
    "tokens": "Rate limit reached for tokens per minute",
    "concurrency": "Too many requests in flight for this key",
}


def refusal(admission: Admission, who: str) -> GatewayError:
    limit = admission.limit or "requests"
    headers = ratelimit_headers(admission)
    if admission.extra.get("too_large"):
        return RateLimited(
            f"The request is larger than {who}'s tokens-per-minute limit "
            f"({admission.tokens_limit}); it can never be admitted.",
            code="tokens",
            headers=headers,
            should_retry=False,
        )
    wait = admission.retry_after if admission.retry_after is not None else 1.0
    if limit == "concurrency":
        # The limiter's bound is a lease expiry (up to lease_ttl_s away); requests in flight
        # usually end much sooner, so a client is told to look again shortly.
        wait = min(wait, CONCURRENCY_RETRY_S)
    headers.update(retry_headers(wait))
    return RateLimited(
        f"{_MESSAGES.get(limit, 'Rate limit reached')} ({who}). Please try again in "
        f"{format_reset(wait)}.",
        code=limit,
        headers=headers,
    )


class _OncePerMinute:
    """One warning a minute while the limits backend is down, with how many requests it
    concerned (the counter has each); not one per request."""

    def __init__(self) -> None:
        self._last = float("-inf")
        self._since = 0

    def warn(self, subject: str, action: str, error: str) -> None:
        self._since += 1
        now = time.monotonic()
        if now - self._last < 60.0:
            return
        log.warning(
            "limits backend unavailable",
            extra={"subject": subject, "action": action, "requests": self._since, "error": error},
        )
        self._last = now
        self._since = 0


_BACKEND_WARNINGS = _OncePerMinute()


def _backend_down(runtime: Runtime, what: str, error: LimiterUnavailable) -> None:
    """The limits backend did not answer: serve anyway, or refuse, as configured. The
    warning names why (the limiter's message names the backend's error, never its URL's
    password)."""
    action = runtime.config.limits.on_backend_error
    LIMITER_ERRORS.labels(action).inc()
    _BACKEND_WARNINGS.warn(what, action, str(error))
    if action == "deny":
        raise ServiceUnavailable(
            "The gateway cannot check rate limits right now; please retry shortly.",
            code="limits_unavailable",
            headers={"retry-after": "1"},
        )


def take_process_slot(process: GatewayProcess, runtime: Runtime, state: RequestState) -> None:
    """`server.max_concurrent`: requests in flight in this process. Synchronous: no I/O."""
    if process.in_flight >= runtime.config.server.max_concurrent:
        RATE_LIMITED.labels(_plan_label(state), "capacity").inc()
        raise RateLimited(
            "The gateway is at capacity; please retry shortly.",
            code="capacity",
            headers=retry_headers(1.0),
        )
    process.in_flight += 1
    state.lease.take(process.slot_give_back)


def _plan_label(state: RequestState) -> str:
    return (state.principal.plan if state.principal else None) or "none"


_NO_LIMITS = LimitSpec()
# A plan's LimitSpec, by its three numbers: one frozen dataclass made per distinct plan, not
# one per request.
_SPECS: dict[tuple[int | None, int | None, int | None], LimitSpec] = {}


def _spec_of(rpm: int | None, tpm: int | None, max_concurrent: int | None) -> LimitSpec:
    found = _SPECS.get((rpm, tpm, max_concurrent))
    if found is None:
        found = _SPECS[(rpm, tpm, max_concurrent)] = LimitSpec(rpm, tpm, max_concurrent)
    return found


async def admit_key(
    process: GatewayProcess,
    runtime: Runtime,
    state: RequestState,
    estimate: TokenEstimate,
    chain: Sequence[str],
    *,
    cache_hit: bool = False,
) -> None:
    """The key's plan (rpm, tpm reserving the estimate, max_concurrent) and every budget the
    request must fit (reserving its worst-case cost on `chain`), in one admission. A cache
    hit costs no tokens and no money: only rpm and max_concurrent apply to it."""
    principal = state.principal
    if principal is None:
        return
    config = runtime.config
    plan = config.plans[principal.plan] if principal.plan is not None else None
    spec = _spec_of(plan.rpm, plan.tpm, plan.max_concurrent) if plan is not None else _NO_LIMITS
    budgets = budget_charges(config, principal, state.feature)
    if cache_hit:
        spec = LimitSpec(spec.rpm, None, spec.max_concurrent)
        budgets = ()
    if spec.empty and not budgets:
        return
    cost = worst_case_cost(config, chain, estimate) if budgets else 0
    subject = f"key:{principal.name}"
    tokens = estimate.reserve if spec.tpm is not None else 0
    limiter = process.limiter
    try:
        admission = limiter.admit_now(subject, spec, tokens, budgets, cost)
        if admission is None:
            admission = await limiter.admit(subject, spec, tokens, budgets, cost)
    except LimiterUnavailable as exc:
        _backend_down(runtime, subject, exc)
        return
    headers = ratelimit_headers(admission)
    if admission.budgets:
        headers.update(remaining_headers(admission))
    state.ratelimit_headers = headers
    if not admission.allowed:
        if admission.limit == "budget":
            BUDGET_REFUSALS.labels(admission.extra.get("budget_scope", "total")).inc()
            raise budget_exhausted(admission, dict(headers))
        RATE_LIMITED.labels(principal.plan or "none", admission.limit or "requests").inc()
        raise refusal(admission, f"key '{principal.name}'")
    _keep(process, state, Hold(process, subject, admission))


def _keep(process: GatewayProcess, state: RequestState, hold: Hold) -> GiveBack:
    """Hold `hold` for the request: its lease renewed while it lasts, and given back (its
    tokens settled) when the request settles. Returns the give-back, for `give_back_now`."""
    if hold.admission.lease_id is not None:
        process.leases.hold(hold.subject, hold.admission.lease_id)
    return state.lease.take(hold)


async def release(process: GatewayProcess, hold: Hold, actual_tokens: int | None) -> None:
    """Give an admission back (the lease) and settle its tokens."""
    if hold.admission.lease_id is not None:
        process.leases.drop(hold.subject, hold.admission.lease_id)
    await process.limiter.settle(hold.subject, hold.admission, actual_tokens)


class ModelGate:
    """`models.X.limits` for one request: a saturated model is skipped for the next one."""

    __slots__ = ("_holds", "estimate", "process", "runtime", "state", "waits")

    def __init__(
        self,
        process: GatewayProcess,
        runtime: Runtime,
        state: RequestState,
        estimate: TokenEstimate,
    ) -> None:
        self.process = process
        self.runtime = runtime
        self.state = state
        self.estimate = estimate
        self._holds: dict[str, tuple[Hold, GiveBack]] = {}
        self.waits: dict[str, float] = {}  # saturated model → its true wait

    async def take(self, model: str) -> bool:
        """Admit the request at `model`; False when the model is saturated."""
        limits = self.runtime.config.models[model].limits
        if limits.rpm is None and limits.tpm is None and limits.max_concurrent is None:
            return True  # the common case: no model limits, nothing to ask
        spec = _spec_of(limits.rpm, limits.tpm, limits.max_concurrent)
        subject = f"model:{model}"
        limiter = self.process.limiter
        tokens = self.estimate.reserve
        try:
            admission = limiter.admit_now(subject, spec, tokens)
            if admission is None:
                admission = await limiter.admit(subject, spec, tokens)
        except LimiterUnavailable as exc:
            _backend_down(self.runtime, subject, exc)
            return True
        if not admission.allowed:
            self.waits[model] = admission.retry_after if admission.retry_after else 1.0
            return False
        hold = Hold(self.process, subject, admission)
        self._holds[model] = (hold, _keep(self.process, self.state, hold))
        return True

    async def give_back(self, model: str) -> None:
        """The attempt at `model` failed: its room is free for others at once."""
        held = self._holds.pop(model, None)
        if held is not None:
            hold, give_back = held
            if self.state.lease.forget(give_back):
                await release(self.process, hold, 0)

    def capacity_error(self) -> GatewayError:
        wait = min(self.waits.values(), default=1.0)
        return RateLimited(
            "Every model that could serve this request is at its capacity; please retry "
            f"in {format_reset(wait)}.",
            code="capacity",
            headers=retry_headers(wait),
        )
