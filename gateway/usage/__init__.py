"""Usage records: one per request, queued without blocking, written to JSONL and Redis, and
aggregated for `GET /v1/usage`."""

from gateway.usage.build import build_sinks
from gateway.usage.jsonl import JsonlSink, ReadStats, read_records, read_usage, usage_files
from gateway.usage.memory_store import MemoryUsageStore
from gateway.usage.query import UsageQuery, UsageQueryError, UsageStore
from gateway.usage.record import UsageRecord, format_ts, parse_ts, ts_from_epoch
from gateway.usage.recorder import RecorderStats, SinkStats, UsageRecorder
from gateway.usage.redis_sink import RedisUsageSink
from gateway.usage.redis_store import RedisUsageStore, UsageUnavailable
from gateway.usage.sinks import UsageSink

__all__ = [
    "JsonlSink",
    "MemoryUsageStore",
    "ReadStats",
    "RecorderStats",
    "RedisUsageSink",
    "RedisUsageStore",
    "SinkStats",
    "UsageQuery",
    "UsageQueryError",
    "UsageRecord",
    "UsageRecorder",
    "UsageSink",
    "UsageStore",
    "UsageUnavailable",
    "build_sinks",
    "format_ts",
    "parse_ts",
    "read_records",
    "read_usage",
    "ts_from_epoch",
    "usage_files",
]
