"""Every Prometheus collector, defined once, in one registry per process.

Label values are bounded: tiers, models and providers come from config, features from
`usage.features` (anything else counts as `other`), reasons and limits from fixed sets; never a
user, a key or a conversation.

The collectors are the gateway's own, not prometheus_client's `Counter` and `Histogram`: those
take a lock and validate on every increment, and a request makes about a dozen of them, which
cost more than the rest of its bookkeeping together. Here a value is a plain float that only the
event loop's thread writes, and prometheus_client is used where its work is worth it: turning the
values into the text format when /metrics is scraped.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class _Number:
    """One labelled number: a counter's or a gauge's value."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class CounterValue(_Number):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class GaugeValue(_Number):
    __slots__ = ()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class HistogramValue:
    """One labelled histogram: a count per bucket (not cumulative; summed at scrape time)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # ends with +Inf, so every value finds its bucket
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bound >= amount: Prometheus buckets are "less than or equal".
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


V = TypeVar("V")


class Collector(Generic[V]):
    """A metric name with its label names, its values by label values, and what
    prometheus_client needs to scrape it (`collect`, `describe`)."""

    kind: str  # the Prometheus type

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], V] = {}
        registry.register(self)

    def labels(self, *values: str) -> V:
        found = self._values.get(values)
        if found is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
            found = self._values[values] = self._new_value()
        return found

    def _new_value(self) -> V:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Metric, labels: list[str], value: V) -> None:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for labels, value in self._values.items():
            self._add(family, list(labels), value)
        yield family

    def describe(self) -> Iterator[Metric]:
        yield self._family()


N = TypeVar("N", bound=_Number)


class _Scalar(Collector[N]):
    """A counter or a gauge: one number per label set; they differ only in their value's
    methods and in the family they are exported as."""

    _value_class: type[N]
    _family_class: type[CounterMetricFamily] | type[GaugeMetricFamily]

    def _new_value(self) -> N:
        return self._value_class()

    def _family(self) -> Metric:
        return self._family_class(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, labels: list[str], value: N) -> None:
        assert isinstance(family, CounterMetricFamily | GaugeMetricFamily)
        family.add_metric(labels, value.value)


class Counter(_Scalar[CounterValue]):
    kind = "counter"
    _value_class = CounterValue
    _family_class = CounterMetricFamily


class Gauge(_Scalar[GaugeValue]):
    kind = "gauge"
    _value_class = GaugeValue
    _family_class = GaugeMetricFamily


class Histogram(Collector[HistogramValue]):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        self._le = ["+Inf" if b == math.inf else repr(b) for b in self.bounds]
        super().__init__(name, documentation, labelnames, registry)

    def _new_value(self) -> HistogramValue:
        return HistogramValue(self.bounds)

    def _family(self) -> Metric:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, labels: list[str], value: HistogramValue) -> None:
        assert isinstance(family, HistogramMetricFamily)
        cumulative, buckets = 0, []
        for le, count in zip(self._le, value.counts, strict=True):
            cumulative += count
            buckets.append((le, float(cumulative)))
        family.add_metric(labels, buckets, value.sum)


REGISTRY = CollectorRegistry(auto_describe=True)

# Buckets that fit LLM calls: first tokens within a minute, whole calls within ten.
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60)
DURATION_BUCKETS = (
    0.1,
    0.25,
    0.5,
    1,
    2,
    3,
    5,
    7.5,
    10,
    15,
    20,
    30,
    45,
    60,
    90,
    120,
    180,
    300,
    450,
    600,
)
OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1,
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
STREAM_RECOVERIES = Counter(
    "gateway_stream_recoveries_total",
    "Streams that failed after their first event and were continued on another model.",
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
CACHE_REQUESTS = Counter(
    "gateway_cache_requests_total",
    "Requests the response cache saw: hit (answered from it), miss, bypass (not looked up).",
    ["api", "result"],
    registry=REGISTRY,
)
CACHE_UNAVAILABLE = Counter(
    "gateway_cache_unavailable_total",
    "Response cache operations skipped because its Redis could not be reached.",
    ["op"],
    registry=REGISTRY,
)
BUDGET_REFUSALS = Counter(
    "gateway_budget_refusals_total",
    "Requests refused because a budget was spent, by the budget's scope.",
    ["scope"],
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
# The memory backend's own count, read at each scrape (it bounds itself by `cache.max_mb`).
CACHE_MEMORY_BYTES = Gauge(
    "gateway_cache_memory_bytes",
    "Bytes the memory response cache holds (entries and their bookkeeping), at most max_mb.",
    [],
    registry=REGISTRY,
)
CACHE_MEMORY_ENTRIES = Gauge(
    "gateway_cache_memory_entries",
    "Entries the memory response cache holds.",
    [],
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


class RequestSeries:
    """The series every finished API request updates, found by one lookup per distinct
    (tier, model, feature, status, stream) instead of one per metric."""

    __slots__ = ("duration", "overhead", "requests")

    def __init__(self, tier: str, model: str, feature: str, status: int, stream: bool) -> None:
        streamed = "true" if stream else "false"
        self.requests = REQUESTS.labels(tier, model, feature, str(status))
        self.duration = DURATION.labels(tier, model, streamed)
        self.overhead = OVERHEAD.labels(streamed)


class SpendSeries:
    """What a request that used tokens adds to, by (feature, model)."""

    __slots__ = ("cached", "completion", "cost", "prompt")

    def __init__(self, feature: str, model: str) -> None:
        self.prompt = TOKENS.labels(feature, model, "prompt")
        self.completion = TOKENS.labels(feature, model, "completion")
        self.cached = TOKENS.labels(feature, model, "cached")
        self.cost = COST.labels(feature, model)


_request_series: dict[tuple[str, str, str, int, bool], RequestSeries] = {}
_spend_series: dict[tuple[str, str], SpendSeries] = {}


def request_series(tier: str, model: str, feature: str, status: int, stream: bool) -> RequestSeries:
    key = (tier, model, feature, status, stream)
    found = _request_series.get(key)
    if found is None:
        found = _request_series[key] = RequestSeries(tier, model, feature, status, stream)
    return found


def spend_series(feature: str, model: str) -> SpendSeries:
    key = (feature, model)
    found = _spend_series.get(key)
    if found is None:
        found = _spend_series[key] = SpendSeries(feature, model)
    return found


def render() -> tuple[bytes, str]:
    """The text exposition and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
