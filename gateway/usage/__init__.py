"""Usage records: one per request, queued without blocking, written to JSONL and Redis, and
aggregated for `GET /v1/usage`.

The names below are imported on first use (PEP 562), so that importing any part of the
package does not load the Redis client (7 MB) in a gateway that never uses it.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "build_sinks": "build",
    "JsonlSink": "jsonl",
    "ReadStats": "jsonl",
    "read_records": "jsonl",
    "read_usage": "jsonl",
    "usage_files": "jsonl",
    "MemoryUsageStore": "memory_store",
    "UsageQuery": "query",
    "UsageQueryError": "query",
    "UsageStore": "query",
    "UsageUnavailable": "query",
    "UsageRecord": "record",
    "format_ts": "record",
    "parse_ts": "record",
    "ts_from_epoch": "record",
    "RecorderStats": "recorder",
    "SinkStats": "recorder",
    "UsageRecorder": "recorder",
    "RedisUsageSink": "redis_sink",
    "RedisUsageStore": "redis_store",
    "UsageSink": "sinks",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.usage' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gateway.usage.{module}"), name)
