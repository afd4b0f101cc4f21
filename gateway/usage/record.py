"""One usage record per request: what it was for, where it went, what it cost.

A record is written once, at the end of a request (failed, cancelled and rate-limited ones
included), to every usage sink. Its JSON form is one object per line in the JSONL file and one
stream entry in Redis; readers accept fields they do not know, so a newer gateway's records can
be read by an older one.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson


def format_ts(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and a Z: `2025-01-31T12:00:00.123Z`."""
    moment = moment.astimezone(UTC) if moment.tzinfo is not None else moment
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


_second_cache: tuple[int, str] = (-1, "")


def ts_from_epoch(seconds: float) -> str:
    """`format_ts` of a `time.time()` value. Called once per request: the formatted second
    is reused while it lasts, only the milliseconds change."""
    global _second_cache
    whole = int(seconds)
    if _second_cache[0] != whole:
        _second_cache = (whole, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole)))
    return f"{_second_cache[1]}{int((seconds - whole) * 1000):03d}Z"


def parse_ts(ts: str) -> datetime:
    """The aware UTC datetime of a record's `ts` (or any ISO 8601 datetime with an offset)."""
    moment = datetime.fromisoformat(ts)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# Not frozen: a frozen dataclass pays object.__setattr__ per field in __init__ (~7 us for
# these 21 fields on CPython 3.11, more than the rest of settling a request). Records are
# never changed after they are made.
@dataclass(slots=True)
class UsageRecord:
    """What one request used. `key` is the gateway key's name, never its secret."""

    ts: str  # the request's start, ISO 8601 UTC with milliseconds and Z
    request_id: str
    key: str | None
    user: str | None
    feature: str
    conversation: str | None
    tier: str
    model: str | None
    provider: str | None
    stream: bool
    status: int  # HTTP status; 499 when the client went away first
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    latency_ms: float
    ttft_ms: float | None
    attempts: int
    error: str | None
    cut: bool  # a stream that ended before the upstream finished it
    estimated: bool  # tokens estimated: the upstream never reported usage
    api: str  # the API the client spoke: chat, embeddings, messages, responses, completions
    cache_write_tokens: int = 0  # part of prompt_tokens: written to a prompt cache
    reasoning_tokens: int = 0  # part of completion_tokens
    cache: str | None = None  # the response cache: hit, miss or bypass; None: no cache
    saved_usd: float = 0.0  # a cache hit: what the answer cost when it was made
    # A stream continued on another model after it failed (`routing.midstream: continue`):
    # its tokens and cost are every model's, and `recovered_from` lists each failed stream
    # as "model: reason".
    recovered: bool = False
    recovered_from: list[str] | None = None

    @property
    def day(self) -> str:
        """The UTC day of `ts`, YYYY-MM-DD."""
        return self.ts[:10]

    @property
    def is_error(self) -> bool:
        return self.status >= 400

    def to_json(self) -> bytes:
        """One JSON object, no trailing newline."""
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> UsageRecord:
        """Parse one record; unknown fields are ignored. Raises ValueError when it is not a
        record (not JSON, a required field missing, a field of the wrong type)."""
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("a usage record must be a JSON object")
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> UsageRecord:
        values: dict[str, Any] = {}
        for name, (kind, nullable, default) in _FIELDS.items():
            value = raw.get(name, default)
            if value is None and not nullable and default is not _REQUIRED:
                value = default  # NaN is written as null; a record is still worth reading
            if value is _REQUIRED:
                raise ValueError(f"missing field {name!r}")
            values[name] = _check(name, value, kind, nullable)
        try:
            parse_ts(values["ts"])
        except ValueError as exc:
            raise ValueError(f"field 'ts' is not an ISO 8601 datetime: {values['ts']!r}") from exc
        return cls(**values)


_REQUIRED: Any = object()


def _check(name: str, value: Any, kind: type, nullable: bool) -> Any:
    if value is None:
        if nullable:
            return None
        raise ValueError(f"field {name!r} must not be null")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, kind):
        return value
    raise ValueError(f"field {name!r} must be {kind.__name__}, got {type(value).__name__}")


# name → (type, nullable, default when absent). Fields added after the first release get a
# default so that older files still read.
_FIELDS: dict[str, tuple[type, bool, Any]] = {
    "ts": (str, False, _REQUIRED),
    "request_id": (str, False, _REQUIRED),
    "key": (str, True, None),
    "user": (str, True, None),
    "feature": (str, False, "unknown"),
    "conversation": (str, True, None),
    "tier": (str, False, ""),
    "model": (str, True, None),
    "provider": (str, True, None),
    "stream": (bool, False, False),
    "status": (int, False, _REQUIRED),
    "prompt_tokens": (int, False, 0),
    "completion_tokens": (int, False, 0),
    "cached_tokens": (int, False, 0),
    "cost_usd": (float, False, 0.0),
    "latency_ms": (float, False, 0.0),
    "ttft_ms": (float, True, None),
    "attempts": (int, False, 0),
    "error": (str, True, None),
    "cut": (bool, False, False),
    "estimated": (bool, False, False),
    "api": (str, False, "chat"),
    "cache_write_tokens": (int, False, 0),
    "reasoning_tokens": (int, False, 0),
    "cache": (str, True, None),
    "saved_usd": (float, False, 0.0),
    "recovered": (bool, False, False),
    "recovered_from": (list, True, None),
}
assert tuple(_FIELDS) == tuple(f.name for f in dataclasses.fields(UsageRecord))
