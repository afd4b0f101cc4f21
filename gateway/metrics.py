"""Every Prometheus collector, defined once, in one registry per process.

Label values are bounded: tiers, models and providers come from config, reasons from a fixed
set; never a user, a key or a conversation.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

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
MODEL_AVAILABLE = Gauge(
    "gateway_model_available",
    "1 while a model may be tried, 0 while it is cooling down.",
    ["model"],
    registry=REGISTRY,
)


def render() -> tuple[bytes, str]:
    """The text exposition and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
