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
    cache_write: int = 0
    cache_write_1h: int = 0  # part of `cache_write`
    reasoning: int = 0  # part of `completion`
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def tokens_of(state: RequestState) -> Tokens:
    """The upstream's own count; for a stream cut before its usage arrived, the estimate of
    what was sent so far (and says so); nothing when no upstream answered."""
    if state.usage is not None:
        usage = state.usage
        return Tokens(
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
            usage.cache_write_tokens,
            usage.cache_write_1h_tokens,
            usage.reasoning_tokens,
        )
    if state.first_token_at is not None:
        prompt = state.estimate.prompt if state.estimate is not None else 0
        return Tokens(prompt, state.streamed_events, estimated=True)
    return Tokens()


def feature_label(config: GatewayConfig, feature: str) -> str:
    """Metric label values are bounded: a feature not in `usage.features` counts as other."""
    return feature if feature in config.usage.features else "other"


def cost_usd(config: GatewayConfig, model: str, tokens: Tokens) -> float:
    """What the provider's invoice says, from the model's price per million tokens:

        (prompt - cached - cache_write) * input
        + cached * cached_input
        + (cache_write - cache_write_1h) * cache_write + cache_write_1h * cache_write_1h
        + completion * output            (reasoning tokens are part of completion)

    An unset `cached_input` or `cache_write` is `input`; an unset `cache_write_1h` is
    `cache_write`."""
    if model not in config.models:
        return 0.0
    price = config.models[model].price
    cached = min(tokens.cached, tokens.prompt)
    written = min(tokens.cache_write, tokens.prompt - cached)
    written_1h = min(tokens.cache_write_1h, written)
    cached_price = price.cached_input if price.cached_input is not None else price.input
    write_price = price.cache_write if price.cache_write is not None else price.input
    write_1h_price = price.cache_write_1h if price.cache_write_1h is not None else write_price
    return (
        (tokens.prompt - cached - written) * price.input
        + cached * cached_price
        + (written - written_1h) * write_price
        + written_1h * write_1h_price
        + tokens.completion * price.output
    ) / 1_000_000
