"""The gateway's own collectors, read back through prometheus_client's text parser: what a
Prometheus server scraping /metrics would see."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Counter, Gauge, Histogram


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    registry = CollectorRegistry()
    latency = Histogram("t_seconds", "doc", ["route"], buckets=(0.1, 1, 5), registry=registry)
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        latency.labels("a").observe(value)
    got = scrape(registry)

    def bucket(le: str) -> float:
        return got[("t_seconds_bucket", (("le", le), ("route", "a")))]

    # A value equal to a bound belongs to that bound's bucket ("less than or equal").
    assert [bucket(le) for le in ("0.1", "1.0", "5.0", "+Inf")] == [2, 4, 4, 5]
    assert got[("t_seconds_count", (("route", "a"),))] == 5
    assert got[("t_seconds_sum", (("route", "a"),))] == pytest.approx(8.65)


def test_counters_and_gauges_by_label() -> None:
    registry = CollectorRegistry()
    requests = Counter("r_total", "doc", ["status"], registry=registry)
    in_flight = Gauge("g", "doc", ["tier"], registry=registry)
    requests.labels("200").inc()
    requests.labels("200").inc(2)
    requests.labels("500").inc()
    in_flight.labels("fast").inc()
    in_flight.labels("fast").inc()
    in_flight.labels("fast").dec()
    in_flight.labels("slow").set(7)
    got = scrape(registry)
    assert got[("r_total", (("status", "200"),))] == 3
    assert got[("r_total", (("status", "500"),))] == 1
    assert got[("g", (("tier", "fast"),))] == 1
    assert got[("g", (("tier", "slow"),))] == 7


def test_misuse_is_refused() -> None:
    registry = CollectorRegistry()
    requests = Counter("r_total", "doc", ["status"], registry=registry)
    with pytest.raises(ValueError):
        requests.labels("200").inc(-1)
    with pytest.raises(ValueError):
        requests.labels("200", "extra")
    # The same name twice in one registry is refused, as prometheus_client refuses it.
    with pytest.raises(ValueError):
        Counter("r_total", "doc", ["status"], registry=registry)
