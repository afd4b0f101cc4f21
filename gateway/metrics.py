"""Every Prometheus collector, defined once, in one registry per process.

Label values are bounded: tiers, models and providers come from config, features from
`usage.features` (anything else counts as `other`), reasons and limits from fixed sets; never a
user, a key or a conversation.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

# Buckets that fit LLM calls: first tokens within a minute, whole calls within ten.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60)
DURATION_BUCKETS = (
    0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 450, 600,
)
OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1,
)

REQUESTS = Counter(
    "gateway_requests_total",
    "Requests answered, by HTTP status (499: the client went away first).",
    ["tier", "model", "feature", "status"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time from the request's arrival to the end of its answer (a stream's last event).",
    ["tier", "model", "stream"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
TTFT = Histogram(
    "gateway_time_to_first_token_seconds",
    "Time from the request's arrival to the first stream event sent to the client.",
    ["tier", "model"],
    buckets=TTFT_BUCKETS,
    registry=REGISTRY,
)
OVERHEAD = Histogram(
    "gateway_overhead_seconds",
    "Time spent in the gateway itself: the request's duration minus upstream waits.",
    ["stream"],
    buckets=OVERHEAD_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "gateway_tokens_total",
    "Tokens as the upstreams counted them; `cached` is part of `prompt`.",
    ["feature", "model", "kind"],
    registry=REGISTRY,
)
COST = Counter(
    "gateway_cost_usd_total",
    "Cost in USD from models' prices.",
    ["feature", "model"],
    registry=REGISTRY,
)
FALLBACKS = Counter(
    "gateway_fallbacks_total",
    "Requests moved from one model to the next of their chain.",
    ["tier", "from_model", "to_model", "reason"],
    registry=REGISTRY,
)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors_total",
    "Failed upstream attempts, by why they failed.",
    ["provider", "model", "reason"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "gateway_rate_limited_total",
    "Requests refused by a limit: requests, tokens, concurrency or capacity.",
    ["plan", "limit"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "gateway_in_flight_requests",
    "Requests being served now.",
    ["tier"],
    registry=REGISTRY,
)
MODEL_AVAILABLE = Gauge(
    "gateway_model_available",
    "1 while a model may be tried, 0 while it is cooling down.",
    ["model"],
    registry=REGISTRY,
)
CONFIG_RELOADS = Counter(
    "gateway_config_reloads_total",
    "Config reloads, by result.",
    ["result"],
    registry=REGISTRY,
)
LIMITER_ERRORS = Counter(
    "gateway_limiter_errors_total",
    "Admissions decided without the limits backend because it could not be asked.",
    ["action"],
    registry=REGISTRY,
)

USAGE_DROPPED = Counter(
    "gateway_usage_records_dropped_total",
    "Usage records lost: the queue was full, or a sink's backlog overflowed while it failed.",
    ["sink"],
    registry=REGISTRY,
)

NO_MODEL = "none"  # the model label of a request that never reached one


@lru_cache(maxsize=65536)
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once: prometheus_client's own lookup validates and
    locks on every call, which costs more than the increment itself on the request path.
    Label values are bounded (see above), so the cache is too."""
    return metric.labels(*labels)


def render() -> tuple[bytes, str]:
    """The text exposition and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
