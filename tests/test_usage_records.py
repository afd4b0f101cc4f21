"""Usage records, query parameters, percentiles and the in-memory usage store."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

# From the defining modules: the names gateway.usage loads on first use are Any to mypy.
from gateway.usage.aggregate import bucket_of, percentiles
from gateway.usage.jsonl import JsonlSink
from gateway.usage.memory_store import MemoryUsageStore
from gateway.usage.query import UsageQuery, UsageQueryError
from gateway.usage.record import UsageRecord, format_ts

NOW = datetime(2025, 3, 10, 15, 30, 0, tzinfo=UTC)


def make_record(**changes: Any) -> UsageRecord:
    """A successful record; any field may be changed."""
    values: dict[str, Any] = {
        "ts": format_ts(NOW),
        "request_id": "req_1",
        "key": "app",
        "user": "u1",
        "feature": "chat-api",
        "conversation": None,
        "tier": "fast",
        "model": "gpt-up",
        "provider": "up",
        "stream": False,
        "status": 200,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cached_tokens": 0,
        "cost_usd": 0.001,
        "latency_ms": 120.0,
        "ttft_ms": None,
        "attempts": 1,
        "error": None,
        "cut": False,
        "estimated": False,
        "api": "chat",
    }
    values.update(changes)
    return UsageRecord(**values)


def test_record_has_exactly_the_contract_fields_in_order() -> None:
    assert [f.name for f in dataclasses.fields(UsageRecord)] == [
        "ts",
        "request_id",
        "key",
        "user",
        "feature",
        "conversation",
        "tier",
        "model",
        "provider",
        "stream",
        "status",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_usd",
        "latency_ms",
        "ttft_ms",
        "attempts",
        "error",
        "cut",
        "estimated",
        "api",
        "cache_write_tokens",
        "reasoning_tokens",
        "cache",
        "saved_usd",
        "recovered",
        "recovered_from",
    ]


def test_record_json_round_trip_is_one_object_without_newline() -> None:
    rec = make_record(ttft_ms=42.5, error="upstream_timeout", status=504, cut=True)
    data = rec.to_json()
    assert not data.endswith(b"\n")
    assert orjson.loads(data)["ts"] == "2025-03-10T15:30:00.000Z"
    assert UsageRecord.from_json(data) == rec
    assert rec.day == "2025-03-10"


def test_ts_is_utc_with_milliseconds_and_z() -> None:
    moment = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert format_ts(moment) == "2025-01-02T03:04:05.678Z"
    other_zone = moment.astimezone(timezone(timedelta(hours=5)))
    assert format_ts(other_zone) == "2025-01-02T03:04:05.678Z"


def test_from_json_ignores_unknown_fields_and_defaults_later_ones() -> None:
    raw = orjson.loads(make_record().to_json())
    raw["from_the_future"] = {"x": 1}
    del raw["cut"], raw["estimated"]
    rec = UsageRecord.from_json(orjson.dumps(raw))
    assert rec == make_record()


def test_a_nan_duration_still_reads_back() -> None:
    rec = UsageRecord.from_json(make_record(latency_ms=float("nan")).to_json())
    assert rec.latency_ms == 0.0


@pytest.mark.parametrize(
    "bad",
    [
        b"not json",
        b"[1, 2]",
        b'{"ts": "2025-01-01T00:00:00.000Z"}',  # request_id and status missing
        orjson.dumps({**orjson.loads(make_record().to_json()), "status": "200"}),
        orjson.dumps({**orjson.loads(make_record().to_json()), "stream": 1}),
        orjson.dumps({**orjson.loads(make_record().to_json()), "prompt_tokens": True}),
        orjson.dumps({**orjson.loads(make_record().to_json()), "ts": "yesterday"}),
        make_record().to_json()[:-7],  # a partial line
    ],
)
def test_from_json_rejects_what_is_not_a_record(bad: bytes) -> None:
    with pytest.raises(ValueError):
        UsageRecord.from_json(bad)


# --- query parameters ---------------------------------------------------------------------


def test_query_defaults_to_the_last_seven_utc_days() -> None:
    q = UsageQuery.from_params({}, now=NOW)
    assert q.group_by == ()
    assert q.end == NOW
    assert q.start == datetime(2025, 3, 4, tzinfo=UTC)
    assert q.days() == [f"2025-03-{d:02d}" for d in range(4, 11)]


def test_query_parses_dates_datetimes_and_group_by() -> None:
    q = UsageQuery.from_params(
        {"group_by": "day, model,feature,model", "from": "2025-03-01", "to": "2025-03-02"},
        now=NOW,
    )
    assert q.group_by == ("day", "model", "feature")
    assert q.start == datetime(2025, 3, 1, tzinfo=UTC)
    assert q.end == datetime(2025, 3, 3, tzinfo=UTC)  # a `to` date includes that day
    assert q.days() == ["2025-03-01", "2025-03-02"]

    q = UsageQuery.from_params({"from": "2025-03-01T10:00:00+02:00", "to": "2025-03-01T12:30Z"})
    assert q.start == datetime(2025, 3, 1, 8, tzinfo=UTC)
    assert q.end == datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    # An unencoded `+` arrives as a space.
    q = UsageQuery.from_params({"from": "2025-03-01T10:00:00 02:00", "to": "2025-03-02"})
    assert q.start == datetime(2025, 3, 1, 8, tzinfo=UTC)
    # Without an offset: UTC.
    q = UsageQuery.from_params({"from": "2025-03-01T10:00:00", "to": "2025-03-02"})
    assert q.start == datetime(2025, 3, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "model,colour"}, "group_by"),
        ({"from": "last week"}, "from"),
        ({"to": "2025-13-01"}, "to"),
        ({"from": "2025-03-05", "to": "2025-03-04"}, "from"),
        ({"from": "2025-03-05T10:00Z", "to": "2025-03-05T10:00Z"}, "from"),
        ({"from": "2020-01-01", "to": "2025-01-01"}, "from"),
        ({"to": "9999-12-31"}, "to"),
    ],
)
def test_invalid_query_parameters_name_the_parameter(params: dict[str, str], param: str) -> None:
    with pytest.raises(UsageQueryError) as caught:
        UsageQuery.from_params(params, now=NOW)
    assert caught.value.param == param
    assert isinstance(caught.value, ValueError)
    assert caught.value.message


# --- percentiles --------------------------------------------------------------------------


def test_percentiles_from_buckets_are_close_to_the_truth() -> None:
    rng = random.Random(7)
    values = sorted(rng.lognormvariate(5, 1) for _ in range(20_000))  # ~150 ms median
    hist: dict[int, int] = {}
    for v in values:
        hist[bucket_of(v)] = hist.get(bucket_of(v), 0) + 1
    estimate = percentiles(hist)
    assert estimate is not None
    for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        truth = values[int(q * len(values)) - 1]
        assert abs(estimate[name] - truth) / truth < 0.1, (name, estimate[name], truth)
    assert estimate["p50"] <= estimate["p95"] <= estimate["p99"]


def test_percentiles_edge_cases() -> None:
    assert percentiles({}) is None
    assert percentiles({bucket_of(0.0): 3}) == {"p50": 0.5, "p95": 0.95, "p99": 0.99}
    huge = percentiles({bucket_of(1e12): 1})
    assert huge is not None and huge["p99"] == 2.0**20
    one = percentiles({bucket_of(100.0): 1})  # bucket (90.5, 107.6]
    assert one is not None and 90 < one["p50"] < one["p99"] < 108


# --- the in-memory store ------------------------------------------------------------------


def _at(moment: datetime, **changes: Any) -> UsageRecord:
    return make_record(ts=format_ts(moment), **changes)


async def test_memory_store_groups_filters_and_counts_errors() -> None:
    store = MemoryUsageStore(clock=NOW.timestamp)
    day1, day2 = NOW - timedelta(days=1), NOW
    store.add(_at(day1, model="a", latency_ms=100.0, ttft_ms=50.0, cost_usd=0.5))
    store.add(_at(day1, model="b", status=429, prompt_tokens=0, completion_tokens=0))
    store.add(_at(day2, model="a", key="other", user="u2", latency_ms=300.0, cached_tokens=4))
    store.add(_at(day2, model="a", feature="search", status=499, cut=True))

    q = UsageQuery.from_params({"group_by": "day,model"}, now=NOW)
    body = await store.query(q, None)
    assert body["object"] == "list" and body["source"] == "memory"
    assert body["group_by"] == ["day", "model"]
    rows = {(r["day"], r["model"]): r for r in body["data"]}
    assert set(rows) == {("2025-03-09", "a"), ("2025-03-09", "b"), ("2025-03-10", "a")}
    assert rows[("2025-03-09", "a")]["cost_usd"] == 0.5
    assert rows[("2025-03-09", "a")]["ttft_ms"] is not None
    assert rows[("2025-03-09", "b")]["errors"] == 1
    assert rows[("2025-03-09", "b")]["ttft_ms"] is None
    today = rows[("2025-03-10", "a")]
    assert today["requests"] == 2 and today["errors"] == 1 and today["cached_tokens"] == 4
    assert set(today) == {
        "day",
        "model",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "cost_usd",
        "cache_hits",
        "saved_usd",
        "latency_ms",
        "ttft_ms",
    }

    # A key sees only its own records.
    own = await store.query(UsageQuery.from_params({"group_by": "key,user"}, now=NOW), "other")
    assert [(r["key"], r["user"], r["requests"]) for r in own["data"]] == [("other", "u2", 1)]

    # No grouping: one row of totals.
    totals = await store.query(UsageQuery.from_params({}, now=NOW), None)
    assert len(totals["data"]) == 1 and totals["data"][0]["requests"] == 4


async def test_memory_store_window_is_exact_to_its_resolution() -> None:
    store = MemoryUsageStore(resolution_s=60, clock=NOW.timestamp)
    store.add(_at(NOW - timedelta(minutes=10)))
    store.add(_at(NOW - timedelta(minutes=5)))
    store.add(_at(NOW - timedelta(days=20)))  # beyond retention: not kept
    q = UsageQuery.from_params(
        {"from": format_ts(NOW - timedelta(minutes=6)), "to": format_ts(NOW)}, now=NOW
    )
    body = await store.query(q, None)
    assert body["data"][0]["requests"] == 1
    assert body["from"] == format_ts(NOW - timedelta(minutes=6))
    assert store.entries == 2


def test_memory_store_stays_bounded() -> None:
    store = MemoryUsageStore(max_entries=100, resolution_s=60, clock=NOW.timestamp)
    for minute in range(50):
        for user in range(10):
            store.add(_at(NOW - timedelta(minutes=50 - minute), user=f"u{user}"))
    assert store.entries <= 100
    assert store.evicted > 0
    # One bucket alone with too many users folds the excess into feature "other".
    store = MemoryUsageStore(max_entries=10, clock=NOW.timestamp)
    for user in range(50):
        store.add(_at(NOW, user=f"u{user}"))
    assert store.entries <= 11 and store.collapsed == 40


async def test_memory_store_rebuilds_from_jsonl_files(tmp_path: Path) -> None:
    days = [datetime(2025, 3, d, 12, tzinfo=UTC) for d in (8, 9, 10)]
    clock_day = [days[0]]
    sink = JsonlSink(tmp_path / "usage.jsonl", clock=lambda: clock_day[0], fsync=False)
    for day in days:
        clock_day[0] = day
        await sink.write([_at(day, request_id=f"{day.day}-{i}") for i in range(3)])
    await sink.aclose()
    partial = b'{"ts": "2025-03-10T12:00:00.000Z", "request_id": "x", "sta'  # a crash
    path = tmp_path / "usage.jsonl"
    path.write_bytes(path.read_bytes() + partial)

    store = MemoryUsageStore(clock=NOW.timestamp)
    stats = store.load_jsonl(tmp_path / "usage.jsonl")
    assert stats.records == 9 and stats.malformed == 1 and stats.files == 3
    body = await store.query(UsageQuery.from_params({"group_by": "day"}, now=NOW), None)
    assert [(r["day"], r["requests"]) for r in body["data"]] == [
        ("2025-03-08", 3),
        ("2025-03-09", 3),
        ("2025-03-10", 3),
    ]
