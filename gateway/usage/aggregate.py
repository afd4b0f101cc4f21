"""Usage aggregates: sums and latency histograms per tuple of dimensions, grouped for answers.

Both usage stores (memory, Redis) keep the same thing: for each time bucket and each tuple
(feature, model, tier, key, user), the counters below plus two sparse histograms (latency and
time to first token) over fixed, log-spaced buckets: bucket `i` holds values in
(2^((i-1)/4), 2^(i/4)] ms (bucket 0 holds everything up to 1 ms), so a percentile estimated from
them is within about 19% of the truth, and usually much closer after interpolation. Bucket
`OVERFLOW` holds values above 2^20 ms (about 17 minutes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.usage.record import UsageRecord

# The dimensions of a tuple, in this order. `day` is a dimension of the answers too, but it
# comes from the time bucket, not from the tuple.
TUPLE_DIMS = ("feature", "model", "tier", "key", "user")
GROUP_DIMS = frozenset((*TUPLE_DIMS, "day"))
KEY_INDEX = TUPLE_DIMS.index("key")

DimTuple = tuple[str | None, str | None, str | None, str | None, str | None]

BUCKETS_PER_DOUBLING = 4
LAST_BUCKET = 20 * BUCKETS_PER_DOUBLING  # upper bound 2^20 ms
OVERFLOW = LAST_BUCKET + 1
PERCENTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))

# Counter names: also the metric names of the Redis layout.
INT_METRICS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "ttft_count",
    "cache_hits",
)
FLOAT_METRICS = ("cost_usd", "latency_ms_sum", "ttft_ms_sum", "saved_usd")
LAT_PREFIX = "lat_b"
TTFT_PREFIX = "ttft_b"


def bucket_of(ms: float) -> int:
    """The histogram bucket of a duration in milliseconds."""
    if not ms > 1.0:  # also NaN
        return 0
    return min(OVERFLOW, math.ceil(BUCKETS_PER_DOUBLING * math.log2(ms)))


def bucket_upper(index: int) -> float:
    return float(2.0 ** (index / BUCKETS_PER_DOUBLING))


def percentiles(hist: Mapping[int, int]) -> dict[str, float] | None:
    """p50/p95/p99 in ms estimated from bucket counts (linear within a bucket); None when empty."""
    total = sum(hist.values())
    if total <= 0:
        return None
    ordered = sorted((i, c) for i, c in hist.items() if c > 0)
    out: dict[str, float] = {}
    for name, q in PERCENTILES:
        rank = q * total
        seen = 0
        value = 0.0
        for index, count in ordered:
            if seen + count >= rank:
                if index >= OVERFLOW:
                    value = bucket_upper(LAST_BUCKET)
                else:
                    lower = 0.0 if index == 0 else bucket_upper(index - 1)
                    upper = bucket_upper(index)
                    value = lower + (upper - lower) * max(0.0, rank - seen) / count
                break
            seen += count
        out[name] = round(value, 2)
    return out


@dataclass(slots=True)
class Agg:
    """Sums over some records, and their latency and TTFT histograms."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    ttft_count: int = 0
    cache_hits: int = 0  # answered from the response cache
    cost_usd: float = 0.0
    saved_usd: float = 0.0  # what the cache hits would have cost
    latency_ms_sum: float = 0.0
    ttft_ms_sum: float = 0.0
    lat: dict[int, int] = field(default_factory=dict)
    ttft: dict[int, int] = field(default_factory=dict)

    def add_record(self, rec: UsageRecord) -> None:
        # A NaN or infinite value counts as 0: one bad record must not spoil a sum.
        self.requests += 1
        self.errors += rec.is_error
        self.prompt_tokens += rec.prompt_tokens
        self.completion_tokens += rec.completion_tokens
        self.cached_tokens += rec.cached_tokens
        self.cache_write_tokens += rec.cache_write_tokens
        self.reasoning_tokens += rec.reasoning_tokens
        self.cost_usd += _finite(rec.cost_usd)
        if rec.cache == "hit":
            self.cache_hits += 1
            self.saved_usd += _finite(rec.saved_usd)
        latency = _finite(rec.latency_ms)
        self.latency_ms_sum += latency
        lat = bucket_of(latency)
        self.lat[lat] = self.lat.get(lat, 0) + 1
        if rec.ttft_ms is not None:
            ttft_ms = _finite(rec.ttft_ms)
            self.ttft_count += 1
            self.ttft_ms_sum += ttft_ms
            ttft = bucket_of(ttft_ms)
            self.ttft[ttft] = self.ttft.get(ttft, 0) + 1

    def merge(self, other: Agg) -> None:
        for name in INT_METRICS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in FLOAT_METRICS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for index, count in other.lat.items():
            self.lat[index] = self.lat.get(index, 0) + count
        for index, count in other.ttft.items():
            self.ttft[index] = self.ttft.get(index, 0) + count

    def metrics(self) -> Iterator[tuple[str, int | float]]:
        """The stored counters (Redis layout names), zeros left out."""
        for name in INT_METRICS:
            value = getattr(self, name)
            if value:
                yield name, value
        for name in FLOAT_METRICS:
            value = getattr(self, name)
            if value:
                yield name, value
        for index, count in self.lat.items():
            yield f"{LAT_PREFIX}{index}", count
        for index, count in self.ttft.items():
            yield f"{TTFT_PREFIX}{index}", count

    def set_metric(self, metric: str, raw: str | bytes) -> bool:
        """Add one stored counter (Redis layout name and text value); False when unknown."""
        try:
            if metric in INT_METRICS:
                setattr(self, metric, getattr(self, metric) + int(float(raw)))
            elif metric in FLOAT_METRICS:
                setattr(self, metric, getattr(self, metric) + float(raw))
            elif metric.startswith(LAT_PREFIX):
                index = int(metric[len(LAT_PREFIX) :])
                self.lat[index] = self.lat.get(index, 0) + int(raw)
            elif metric.startswith(TTFT_PREFIX):
                index = int(metric[len(TTFT_PREFIX) :])
                self.ttft[index] = self.ttft.get(index, 0) + int(raw)
            else:
                return False
        except ValueError:
            return False
        return True

    def as_row(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": round(self.cost_usd, 9),
            "cache_hits": self.cache_hits,
            "saved_usd": round(self.saved_usd, 9),
            "latency_ms": percentiles(self.lat),
            "ttft_ms": percentiles(self.ttft),
        }


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def dims_of(rec: UsageRecord) -> DimTuple:
    return (rec.feature, rec.model, rec.tier, rec.key, rec.user)


def group(
    items: Iterable[tuple[str, DimTuple, Agg]],
    group_by: tuple[str, ...],
    key_filter: str | None,
) -> list[dict[str, Any]]:
    """Rows of the answer: one per distinct value of the `group_by` dimensions, sorted by
    them; `items` are (day, tuple, aggregate)."""
    positions = [None if dim == "day" else TUPLE_DIMS.index(dim) for dim in group_by]
    groups: dict[tuple[str | None, ...], Agg] = {}
    for day, dims, agg in items:
        if key_filter is not None and dims[KEY_INDEX] != key_filter:
            continue
        label = tuple(day if pos is None else dims[pos] for pos in positions)
        total = groups.get(label)
        if total is None:
            groups[label] = total = Agg()
        total.merge(agg)
    rows = []
    for label in sorted(groups, key=lambda lbl: tuple((v is not None, v or "") for v in lbl)):
        row: dict[str, Any] = dict(zip(group_by, label, strict=True))
        row.update(groups[label].as_row())
        rows.append(row)
    return rows
