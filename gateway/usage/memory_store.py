"""Usage of this process, aggregated in memory, for `/v1/usage` without Redis.

Records are folded into aggregates per time bucket (`resolution_s`, an hour by default) and per
tuple (feature, model, tier, key, user), each with latency and TTFT histograms (see
`aggregate`). Memory is bounded twice: buckets older than `retention_days` are forgotten, and
past `max_entries` (bucket, tuple) aggregates the oldest buckets are evicted (counted and
logged); when the current bucket alone is full, new tuples are folded into feature `other` with
no user. Queries are exact to `resolution_s`: a bucket counts whole when any of it is in the
window, and the answer names the window covered.

At startup `load_jsonl` rebuilds the aggregates from the JSONL usage file and its rotated files,
so a restart does not forget the recent past.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.usage.aggregate import Agg, DimTuple, dims_of, group
from gateway.usage.jsonl import ReadStats, read_usage
from gateway.usage.query import UsageQuery
from gateway.usage.record import UsageRecord, parse_ts

log = logging.getLogger("gateway.usage")


class MemoryUsageStore:
    """Per-bucket, per-tuple aggregates of the records `add`ed; answers usage queries."""

    source = "memory"

    def __init__(
        self,
        *,
        resolution_s: int = 3600,
        retention_days: float = 8,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if resolution_s <= 0 or 86400 % resolution_s:
            raise ValueError("resolution_s must divide a day")
        self.resolution_s = resolution_s
        self.retention_s = retention_days * 86400
        self.max_entries = max_entries
        self.clock = clock
        self.entries = 0
        self.evicted = 0  # aggregates dropped to stay under max_entries
        self.collapsed = 0  # records counted under feature "other", user null, at the bound
        self._collapse_logged = float("-inf")
        self._buckets: dict[int, dict[DimTuple, Agg]] = {}
        self._next_prune = 0.0

    def add(self, rec: UsageRecord, at: float | None = None) -> None:
        """Count one record. Synchronous and cheap: call it where the record is made.
        `at`: the record's time as epoch seconds, when the caller has it (saves parsing
        `rec.ts` again)."""
        if at is not None:
            moment = at
        else:
            try:
                moment = parse_ts(rec.ts).timestamp()
            except ValueError:
                return
        now = self.clock()
        if now >= self._next_prune:
            self._prune(now)
        if moment < now - self.retention_s:
            return
        start = int(moment // self.resolution_s) * self.resolution_s
        bucket = self._buckets.get(start)
        if bucket is None:
            self._buckets[start] = bucket = {}
        dims = dims_of(rec)
        agg = bucket.get(dims)
        if agg is None:
            if self.entries >= self.max_entries:
                self._evict_oldest(keep=start)
            if self.entries >= self.max_entries:
                # One bucket alone is full (say, very many users in an hour): fold the record
                # into a tuple of config-bounded dimensions rather than grow without bound.
                dims = ("other", rec.model, rec.tier, rec.key, None)
                self.collapsed += 1
                if now - self._collapse_logged >= 60:
                    self._collapse_logged = now
                    log.warning(
                        "usage aggregates at their bound; new tuples counted as feature other",
                        extra={"collapsed": self.collapsed, "max_entries": self.max_entries},
                    )
                agg = bucket.get(dims)
            if agg is None:
                bucket[dims] = agg = Agg()
                self.entries += 1
        agg.add_record(rec)

    def load(self, records: Iterable[UsageRecord]) -> int:
        count = 0
        for rec in records:
            self.add(rec)
            count += 1
        return count

    def load_jsonl(self, path: str | Path) -> ReadStats:
        """Rebuild from the JSONL usage file and its rotated files (the retention window).
        Blocking, and not safe alongside `add` from another thread: run it at startup, before
        serving, e.g. `await asyncio.to_thread(store.load_jsonl, path)`."""
        stats = ReadStats()
        since = datetime.fromtimestamp(self.clock() - self.retention_s, UTC)
        self.load(read_usage(path, since, stats))
        if stats.malformed:
            log.warning(
                "usage file lines skipped while rebuilding",
                extra={"path": str(path), "malformed": stats.malformed},
            )
        return stats

    async def query(self, q: UsageQuery, key_filter: str | None) -> dict[str, Any]:
        res = self.resolution_s
        first = math.floor(q.start.timestamp() / res) * res
        end = math.ceil(q.end.timestamp() / res) * res
        items: list[tuple[str, DimTuple, Agg]] = []
        for start, bucket in self._buckets.items():
            if first <= start < end:
                day = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d")
                items.extend((day, dims, agg) for dims, agg in bucket.items())
        rows = group(items, q.group_by, key_filter)
        return q.answer(
            rows, datetime.fromtimestamp(first, UTC), datetime.fromtimestamp(end, UTC), self.source
        )

    def _prune(self, now: float) -> None:
        self._next_prune = now + 60
        horizon = now - self.retention_s - self.resolution_s
        for start in [s for s in self._buckets if s < horizon]:
            self.entries -= len(self._buckets.pop(start))

    def _evict_oldest(self, keep: int) -> None:
        target = int(self.max_entries * 0.9)
        evicted = 0
        for start in sorted(self._buckets):
            if self.entries <= target or start == keep:
                break
            count = len(self._buckets.pop(start))
            self.entries -= count
            evicted += count
        if evicted:
            self.evicted += evicted
            log.warning(
                "usage aggregates evicted: memory bound reached",
                extra={"evicted": evicted, "max_entries": self.max_entries},
            )
