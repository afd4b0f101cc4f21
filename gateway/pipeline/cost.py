"""What a request used and what it cost: its tokens (the upstream's count, or an estimate for
a stream cut before its usage arrived) and their price under the model's `price:`."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.pipeline.context import RequestState


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
