"""Which budgets a request must fit, what it may cost at worst, and how a refusal reads.

The limiter holds the counters (`gateway.limits.budgets`); this module decides, from the
config, what to ask it: the key's own budget (`keys[].budget`, else its plan's), the budget of
the request's feature (`budgets.features`) and the total (`budgets.total`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.config import GatewayConfig
from gateway.errors import InsufficientQuota
from gateway.limits.base import Admission
from gateway.limits.budgets import BudgetCharge, period_end, to_nano
from gateway.pipeline.auth import Principal
from gateway.tokens import TokenEstimate

REMAINING_HEADER = "x-gateway-budget-remaining-usd"


def budget_charges(
    config: GatewayConfig, principal: Principal, feature: str
) -> tuple[BudgetCharge, ...]:
    """Every budget that applies to a request of `principal` for `feature`."""
    if principal.budget is None and config.budgets.total is None and not config.budgets.features:
        return ()  # the common config, asked on every request of a key
    charges: list[BudgetCharge] = []
    if principal.budget is not None:
        budget = principal.budget
        charges.append(BudgetCharge("key", principal.name, to_nano(budget.usd), budget.period))
    by_feature = config.budgets.features.get(feature)
    if by_feature is not None:
        charges.append(BudgetCharge("feature", feature, to_nano(by_feature.usd), by_feature.period))
    total = config.budgets.total
    if total is not None:
        charges.append(BudgetCharge("total", "total", to_nano(total.usd), total.period))
    return tuple(charges)


def configured_budgets(config: GatewayConfig) -> list[tuple[str, BudgetCharge]]:
    """Every budget of the config, with the limiter subject it is admitted under: each key's
    (its own or its plan's), each feature's, the total."""
    found: list[tuple[str, BudgetCharge]] = []
    for key in config.keys or []:
        plan = config.plans.get(key.plan) if key.plan else None
        budget = key.budget or (plan.budget if plan else None)
        if budget is not None:
            charge = BudgetCharge("key", key.name, to_nano(budget.usd), budget.period)
            found.append((f"key:{key.name}", charge))
    for feature, budget in config.budgets.features.items():
        found.append(("", BudgetCharge("feature", feature, to_nano(budget.usd), budget.period)))
    total = config.budgets.total
    if total is not None:
        found.append(("", BudgetCharge("total", "total", to_nano(total.usd), total.period)))
    return found


def worst_case_cost(config: GatewayConfig, chain: Sequence[str], estimate: TokenEstimate) -> int:
    """Nano-dollars the request may cost at most: its prompt estimate at the input price and
    what it may write at the output price, on the priciest model of its chain."""
    prompt, completion = estimate.prompt, estimate.completion
    worst = 0.0
    for name in chain:
        price = config.models[name].price
        worst = max(worst, (prompt * price.input + completion * price.output) / 1_000_000)
    return to_nano(worst)


def usd_text(value: float) -> str:
    """Dollars with the digits a small cost needs (nano-dollar precision), no trailing zeros."""
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def remaining_headers(admission: Admission) -> dict[str, str]:
    """`x-gateway-budget-remaining-usd` for a key with a budget of its own: what is left of it
    after this request's reservation."""
    for state in admission.budgets:
        if state.scope == "key":
            return {REMAINING_HEADER: usd_text(state.remaining_usd)}
    return {}


_WHOSE = {"key": "key '{name}'", "feature": "feature '{name}'", "total": "the gateway's total"}


def budget_exhausted(admission: Admission, headers: dict[str, str]) -> InsufficientQuota:
    scope = admission.extra.get("budget_scope", "total")
    whose = _WHOSE.get(scope, scope).format(name=admission.extra.get("budget_name", ""))
    period = admission.extra.get("budget_period", "total")
    ends = period_end(period, time.time())
    when = f" for this {period}; it resets at {ends}" if ends else ""
    return InsufficientQuota(f"The budget of {whose} is spent{when}.", headers=headers)
