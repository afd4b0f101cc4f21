"""The usage side of a gateway process: every record goes to this process's in-memory store
(so `/v1/usage` sees it at once) and, through the non-blocking recorder, to the sinks. Queries
are answered from the Redis aggregates when the Redis sink is on (every replica's traffic),
else from memory (this process's, rebuilt from the JSONL file at start)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.config import UsageConfig
from gateway.metrics import USAGE_DROPPED
from gateway.store.redis import SharedRedis
from gateway.usage.build import build_sinks
from gateway.usage.memory_store import MemoryUsageStore
from gateway.usage.query import UsageQuery, UsageStore, UsageUnavailable
from gateway.usage.record import UsageRecord
from gateway.usage.recorder import UsageRecorder

log = logging.getLogger("gateway.usage")


class UsageService:
    def __init__(self, config: UsageConfig, redis: SharedRedis | None) -> None:
        self.config = config
        self.memory = MemoryUsageStore()
        self._redis: Any = None
        self.redis_store: UsageStore | None = None
        if config.sinks.redis:
            # Imported only here: a gateway without the Redis sink never loads the client.
            from gateway.usage.redis_store import RedisUsageStore

            assert redis is not None, "usage.sinks.redis needs the process's Redis"
            self._redis = redis.client  # shared: closed by the process, not here
            self.redis_store = RedisUsageStore(self._redis)
        self.recorder = UsageRecorder(
            build_sinks(config, self._redis),
            config.queue_size,
            on_drop=lambda n: USAGE_DROPPED.labels("queue").inc(n),
            on_sink_drop=lambda sink, n: USAGE_DROPPED.labels(sink).inc(n),
        )

    async def start(self) -> None:
        path = self.config.sinks.jsonl
        if path:
            stats = await asyncio.to_thread(self.memory.load_jsonl, path)
            log.info(
                "usage rebuilt from jsonl",
                extra={"path": path, "records": stats.records, "malformed": stats.malformed},
            )
        self.recorder.start()

    def record(self, record: UsageRecord, at: float | None = None) -> None:
        """Never blocks: the sinks are written in the background. `at`: the record's `ts` as
        epoch seconds, when the caller has it."""
        self.memory.add(record, at)
        self.recorder.record(record)

    async def query(self, query: UsageQuery, key_filter: str | None) -> dict[str, Any]:
        if self.redis_store is not None:
            try:
                return await self.redis_store.query(query, key_filter)
            except UsageUnavailable:
                log.warning("usage aggregates in Redis unavailable; answering from memory")
        return await self.memory.query(query, key_filter)

    async def aclose(self, timeout_s: float) -> None:
        await self.recorder.aclose(timeout_s)
