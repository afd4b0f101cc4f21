"""The usage recorder: takes records on the hot path without ever waiting, writes them behind.

`record()` only appends to a bounded in-process queue. A background pump moves the queue into
one backlog per sink every `flush_interval_s` (sooner once `batch_size` records wait), and each
sink has its own writer task, so a slow or failing sink holds up nobody but itself:

- a failed write is retried with exponential backoff, the batch kept (at-least-once);
- a backlog that passes its bound drops its oldest records;
- a full queue drops the new record.

Nothing is dropped silently: every drop is counted (`dropped`, per-sink counts in `stats()`,
the `on_drop` / `on_sink_drop` hooks for metrics) and logged, at most once per `log_interval_s`
per cause with the count. `aclose()` writes out everything still queued, bounded by a timeout.

All methods must be called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import TypedDict

from gateway.usage.record import UsageRecord
from gateway.usage.sinks import UsageSink

log = logging.getLogger("gateway.usage")


class SinkStats(TypedDict):
    backlog: int  # records waiting for this sink, the batch being written included
    written: int
    dropped: int
    failing: bool  # the last write failed
    last_error: str | None


class RecorderStats(TypedDict):
    queued: int  # records not yet handed to the sinks
    dropped: int  # records refused because the queue was full or the recorder closed
    sinks: dict[str, SinkStats]


class _RateLimitedLog:
    """Logs a count of events at most once per interval: the first at once, the rest summed."""

    def __init__(self, message: str, interval_s: float, **fields: object) -> None:
        self.message = message
        self.interval_s = interval_s
        self.fields = fields
        self.pending = 0
        self.total = 0
        self.last_logged = float("-inf")

    def add(self, count: int, detail: str | None = None) -> None:
        self.pending += count
        self.total += count
        self.flush(detail=detail)

    def flush(self, force: bool = False, detail: str | None = None) -> None:
        now = time.monotonic()
        if self.pending and (force or now - self.last_logged >= self.interval_s):
            log.warning(
                self.message,
                extra={"count": self.pending, "total": self.total, "detail": detail, **self.fields},
            )
            self.pending = 0
            self.last_logged = now


class _Lane:
    """One sink, its backlog and its writer task."""

    def __init__(self, sink: UsageSink, bound: int, log_interval_s: float) -> None:
        self.sink = sink
        self.bound = bound
        self.backlog: deque[UsageRecord] = deque()
        self.in_flight = 0
        self.written = 0
        self.dropped = 0
        self.failures = 0  # consecutive failed writes
        self.last_error: str | None = None
        self.has_work = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task: asyncio.Task[None] | None = None
        self.drop_log = _RateLimitedLog(
            "usage records dropped: sink backlog full", log_interval_s, sink=sink.name
        )
        self.fail_log = _RateLimitedLog(
            "usage sink write failed; retrying", log_interval_s, sink=sink.name
        )

    @property
    def pending(self) -> int:
        return len(self.backlog) + self.in_flight

    def stats(self) -> SinkStats:
        return {
            "backlog": self.pending,
            "written": self.written,
            "dropped": self.dropped,
            "failing": self.failures > 0,
            "last_error": self.last_error,
        }


class UsageRecorder:
    """Queue usage records without blocking and write them to every sink in batches."""

    def __init__(
        self,
        sinks: list[UsageSink],
        queue_size: int,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        *,
        backlog_size: int | None = None,
        write_timeout_s: float = 30.0,
        retry_initial_s: float = 0.1,
        retry_max_s: float = 10.0,
        log_interval_s: float = 10.0,
        on_drop: Callable[[int], None] | None = None,
        on_sink_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        """`backlog_size`: records each sink may hold while it is slow or failing (default
        4 * `queue_size`, at least `queue_size`). `write_timeout_s`: a write taking longer
        counts as failed and is retried. `on_drop(n)` is called for records refused by
        `record()`, `on_sink_drop(sink name, n)` for records a sink's backlog had to let go."""
        names = [sink.name for sink in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"usage sink names must be unique: {names}")
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be positive")
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.write_timeout_s = write_timeout_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.on_drop = on_drop
        self.on_sink_drop = on_sink_drop
        self.dropped = 0
        # A backlog holds at least one full queue, or a healthy sink would drop records of a
        # burst the queue accepted.
        bound = max(backlog_size if backlog_size is not None else 4 * queue_size, queue_size)
        self._lanes = [_Lane(sink, bound, log_interval_s) for sink in sinks]
        self._queue: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._closed = False
        self._drop_log = _RateLimitedLog("usage records dropped: queue full", log_interval_s)
        self._closed_log = _RateLimitedLog(
            "usage records dropped: recorder already closed", log_interval_s
        )

    # --- the hot path ---------------------------------------------------------------------

    def record(self, rec: UsageRecord) -> None:
        """Queue one record. Never blocks, never raises; a full queue drops it (counted)."""
        if self._closed:
            self._refuse(self._closed_log)
        elif len(self._queue) >= self.queue_size:
            self._refuse(self._drop_log)
        else:
            self._queue.append(rec)
            if len(self._queue) >= self.batch_size:
                self._wake.set()

    def _refuse(self, why: _RateLimitedLog) -> None:
        self.dropped += 1
        why.add(1)
        if self.on_drop is not None:
            try:
                self.on_drop(1)
            except Exception:
                log.exception("usage on_drop hook failed")

    # --- background -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the pump and one writer per sink. Call once, on the running loop."""
        if self._pump_task is not None:
            return
        self._pump_task = asyncio.create_task(self._pump(), name="usage-pump")
        for lane in self._lanes:
            lane.task = asyncio.create_task(self._run_lane(lane), name=f"usage-{lane.sink.name}")

    async def _pump(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                self._hand_over()
                self._flush_logs()
            except Exception:  # the pump must outlive any surprise, or the queue fills up
                log.exception("usage pump failed")

    def _hand_over(self) -> None:
        """Queue → every sink's backlog; a backlog past its bound loses its oldest records."""
        if not self._queue:
            return
        batch = list(self._queue)
        self._queue.clear()
        for lane in self._lanes:
            lane.backlog.extend(batch)
            excess = min(lane.pending - lane.bound, len(lane.backlog))
            if excess > 0:
                for _ in range(excess):
                    lane.backlog.popleft()
                self._sink_dropped(lane, excess, "backlog full")
            lane.idle.clear()
            lane.has_work.set()

    def _sink_dropped(self, lane: _Lane, count: int, detail: str) -> None:
        lane.dropped += count
        lane.drop_log.add(count, detail)
        if self.on_sink_drop is not None:
            try:
                self.on_sink_drop(lane.sink.name, count)
            except Exception:
                log.exception("usage on_sink_drop hook failed")

    def _flush_logs(self, force: bool = False) -> None:
        self._drop_log.flush(force)
        self._closed_log.flush(force)
        for lane in self._lanes:
            lane.drop_log.flush(force)
            lane.fail_log.flush(force)

    async def _run_lane(self, lane: _Lane) -> None:
        delay = self.retry_initial_s
        while True:
            if not lane.backlog:
                lane.idle.set()
                lane.has_work.clear()
                await lane.has_work.wait()
                continue
            count = min(self.batch_size, len(lane.backlog))
            batch = [lane.backlog.popleft() for _ in range(count)]
            lane.in_flight = count
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    await lane.sink.write(batch)
            except asyncio.CancelledError:
                lane.backlog.extendleft(reversed(batch))  # aclose counts what is left
                lane.in_flight = 0
                raise
            except Exception as exc:
                lane.in_flight = 0
                lane.backlog.extendleft(reversed(batch))
                excess = lane.pending - lane.bound
                if excess > 0:
                    for _ in range(excess):
                        lane.backlog.popleft()
                    self._sink_dropped(lane, excess, "backlog full while failing")
                lane.failures += 1
                lane.last_error = f"{type(exc).__name__}: {exc}"
                lane.fail_log.add(1, lane.last_error)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # replicas spread out
                delay = min(delay * 2, self.retry_max_s)
                continue
            lane.in_flight = 0
            lane.written += count
            if lane.failures:
                log.info(
                    "usage sink recovered",
                    extra={"sink": lane.sink.name, "failed_writes": lane.failures},
                )
                lane.failures = 0
                lane.last_error = None
            delay = self.retry_initial_s

    # --- shutdown and introspection -------------------------------------------------------

    async def aclose(self, timeout_s: float) -> None:
        """Stop taking records, write out everything queued to every sink within `timeout_s`
        (what cannot be written in time is counted as dropped and logged), close the sinks."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        self.start()  # a recorder never started still flushes what it was given
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
        self._hand_over()
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                for lane in self._lanes:
                    await lane.idle.wait()
        except TimeoutError:
            pass
        for lane in self._lanes:
            if lane.task is not None:
                lane.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lane.task
            if lane.pending:
                left = lane.pending
                lane.backlog.clear()
                self._sink_dropped(lane, left, "not written before shutdown timeout")
        self._flush_logs(force=True)
        for lane in self._lanes:
            try:
                async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                    await lane.sink.aclose()
            except Exception:
                log.exception("usage sink failed to close", extra={"sink": lane.sink.name})

    def stats(self) -> RecorderStats:
        return {
            "queued": len(self._queue),
            "dropped": self.dropped,
            "sinks": {lane.sink.name: lane.stats() for lane in self._lanes},
        }
