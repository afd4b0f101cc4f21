"""The usage recorder never blocks its caller, isolates slow sinks, retries, drops only counted."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

# From the defining modules: the names gateway.usage loads on first use are Any to mypy.
from gateway.usage.record import UsageRecord
from gateway.usage.recorder import UsageRecorder
from gateway.usage.sinks import UsageSink
from tests.test_usage_records import make_record


class GateSink(UsageSink):
    """Writes to a list; hangs while `gate` is clear; fails `fail_next` times."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = 0
        self.calls = 0
        self.records: list[UsageRecord] = []
        self.closed = False

    async def write(self, records: list[UsageRecord]) -> None:
        self.calls += 1
        await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("sink unreachable")
        self.records.extend(records)

    async def aclose(self) -> None:
        self.closed = True

    @property
    def ids(self) -> list[str]:
        return [rec.request_id for rec in self.records]


def records(n: int, start: int = 0) -> list[UsageRecord]:
    return [make_record(request_id=str(i)) for i in range(start, start + n)]


async def wait_until(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_record_never_waits_for_a_hanging_sink_and_loses_nothing() -> None:
    slow, fast = GateSink("slow"), GateSink("fast")
    slow.gate.clear()
    recorder = UsageRecorder([slow, fast], queue_size=20_000, flush_interval_s=0.05)
    recorder.start()
    batch = records(10_000)

    started = time.perf_counter()
    for rec in batch:
        recorder.record(rec)
    assert time.perf_counter() - started < 0.1

    # The loop stays responsive, and the other sink is not held up by the hanging one.
    lags = []
    for _ in range(20):
        tick = time.perf_counter()
        await asyncio.sleep(0.05)
        lags.append(time.perf_counter() - tick - 0.05)
    assert max(lags) < 0.2
    assert fast.ids == [rec.request_id for rec in batch]
    assert slow.records == [] and recorder.stats()["sinks"]["slow"]["backlog"] == 10_000

    slow.gate.set()  # recovers after hanging ~1 s
    await wait_until(lambda: len(slow.records) == 10_000)
    assert slow.ids == [rec.request_id for rec in batch]
    stats = recorder.stats()
    assert stats["dropped"] == 0 and stats["sinks"]["slow"]["dropped"] == 0
    assert stats["sinks"]["slow"]["written"] == 10_000
    await recorder.aclose(5)


async def test_a_backlog_past_its_bound_drops_its_oldest_records_counted() -> None:
    slow, fast = GateSink("slow"), GateSink("fast")
    slow.gate.clear()
    dropped_by_sink: dict[str, int] = {}

    def on_sink_drop(name: str, n: int) -> None:
        dropped_by_sink[name] = dropped_by_sink.get(name, 0) + n

    recorder = UsageRecorder(
        [slow, fast],
        queue_size=500,
        batch_size=500,
        flush_interval_s=0.01,
        backlog_size=1000,
        on_sink_drop=on_sink_drop,
    )
    recorder.start()
    for chunk in range(20):
        for rec in records(250, start=chunk * 250):
            recorder.record(rec)
        await asyncio.sleep(0.02)
    await wait_until(lambda: len(fast.records) == 5000)
    stats = recorder.stats()["sinks"]
    assert stats["slow"]["backlog"] == 1000 and stats["slow"]["dropped"] == 4000
    assert stats["fast"]["dropped"] == 0 and recorder.dropped == 0
    assert dropped_by_sink == {"slow": 4000}

    slow.gate.set()
    await wait_until(lambda: len(slow.records) == 1000)
    # The batch being written is kept and the oldest waiting ones went: what arrives is the
    # first batch, then the newest records.
    ids = [int(i) for i in slow.ids]
    assert ids[0] == 0 and ids[-1] == 4999 and ids == sorted(ids)
    assert ids[-600:] == list(range(4400, 5000))
    await recorder.aclose(5)


async def test_a_full_queue_drops_new_records_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = GateSink("s")
    drops: list[int] = []
    recorder = UsageRecorder([sink], queue_size=100, on_drop=drops.append)
    with caplog.at_level(logging.WARNING, logger="gateway.usage"):
        for rec in records(1100):  # not started: nothing drains the queue
            recorder.record(rec)
        assert recorder.dropped == 1000 and sum(drops) == 1000
        assert recorder.stats()["queued"] == 100
        full = [r for r in caplog.records if "queue full" in r.getMessage()]
        assert len(full) == 1  # rate-limited: the first drop at once, the rest summed later
        await recorder.aclose(5)
    full = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert sum(r.__dict__["count"] for r in full) == 1000
    assert sink.ids == [str(i) for i in range(100)]


async def test_a_failing_sink_is_retried_with_the_same_batch_until_it_succeeds() -> None:
    flaky, steady = GateSink("flaky"), GateSink("steady")
    flaky.fail_next = 3
    recorder = UsageRecorder(
        [flaky, steady], queue_size=1000, flush_interval_s=0.01, retry_initial_s=0.05
    )
    recorder.start()
    for rec in records(10):
        recorder.record(rec)
    await wait_until(lambda: flaky.calls >= 2)
    stats = recorder.stats()["sinks"]["flaky"]
    assert stats["failing"] and stats["last_error"] and "unreachable" in stats["last_error"]
    assert stats["backlog"] == 10
    assert steady.ids == [str(i) for i in range(10)]

    await wait_until(lambda: len(flaky.records) == 10)
    assert flaky.ids == [str(i) for i in range(10)] and flaky.calls == 4
    assert not recorder.stats()["sinks"]["flaky"]["failing"]
    await recorder.aclose(5)


async def test_aclose_flushes_everything_queued_then_closes_the_sinks() -> None:
    a, b = GateSink("a"), GateSink("b")
    recorder = UsageRecorder([a, b], queue_size=10_000, batch_size=5000, flush_interval_s=60)
    recorder.start()
    for rec in records(1234):
        recorder.record(rec)
    await asyncio.sleep(0.05)
    assert a.records == []  # still waiting for the flush interval
    await recorder.aclose(5)
    assert len(a.records) == len(b.records) == 1234
    assert a.closed and b.closed
    recorder.record(make_record())  # too late: counted, not lost silently
    assert recorder.dropped == 1


async def test_aclose_is_bounded_and_counts_what_it_could_not_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stuck, fine = GateSink("stuck"), GateSink("fine")
    stuck.gate.clear()
    recorder = UsageRecorder([stuck, fine], queue_size=10_000, flush_interval_s=0.01)
    recorder.start()
    for rec in records(700):
        recorder.record(rec)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="gateway.usage"):
        await recorder.aclose(0.3)
    assert time.monotonic() - started < 2
    stats = recorder.stats()["sinks"]
    assert stats["stuck"]["dropped"] == 700 and stats["stuck"]["backlog"] == 0
    assert len(fine.records) == 700 and stats["fine"]["dropped"] == 0
    assert stuck.closed and fine.closed
    assert any("shutdown" in str(r.__dict__.get("detail")) for r in caplog.records)


def test_duplicate_sink_names_are_refused() -> None:
    with pytest.raises(ValueError):
        UsageRecorder([GateSink("x"), GateSink("x")], queue_size=10)
