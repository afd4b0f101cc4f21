"""Usage of every replica, read from the Redis day hashes the Redis sink writes.

One pipelined round trip of `HGETALL`s, one per UTC day the window touches (no SCAN): the
`agg` hashes, or the `agg_user` ones when grouping by user. The window is applied per day: a
day counts whole when any of it is in the window, and the answer names the days covered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from redis.exceptions import RedisError

from gateway.store.breaker import RedisClient
from gateway.usage.aggregate import KEY_INDEX, Agg, DimTuple, group
from gateway.usage.layout import STREAM_KEY, agg_key, parse_field
from gateway.usage.query import UsageQuery, UsageUnavailable


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class RedisUsageStore:
    """Answers usage queries from the per-day aggregate hashes in Redis."""

    source = "redis"

    def __init__(self, client: RedisClient, *, base_key: str = STREAM_KEY) -> None:
        self.client = client
        self.base_key = base_key

    async def query(self, q: UsageQuery, key_filter: str | None) -> dict[str, Any]:
        """Raises UsageUnavailable when Redis cannot be read."""
        days = q.days()
        with_user = "user" in q.group_by
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for day in days:
                    pipe.hgetall(agg_key(day, with_user, self.base_key))
                hashes: list[Any] = await pipe.execute()
        except RedisError as exc:
            raise UsageUnavailable(f"usage aggregates could not be read: {exc}") from exc
        items: list[tuple[str, DimTuple, Agg]] = []
        for day, fields in zip(days, hashes, strict=True):
            per_tuple: dict[DimTuple, Agg] = {}
            for raw_field, raw_value in fields.items():
                parsed = parse_field(_text(raw_field))
                if parsed is None:
                    continue
                dims, metric = parsed
                if key_filter is not None and dims[KEY_INDEX] != key_filter:
                    continue
                agg = per_tuple.get(dims)
                if agg is None:
                    per_tuple[dims] = agg = Agg()
                agg.set_metric(metric, raw_value)
            items.extend((day, dims, agg) for dims, agg in per_tuple.items())
        rows = group(items, q.group_by, key_filter)
        start = datetime.fromisoformat(days[0]).replace(tzinfo=UTC)
        end = datetime.fromisoformat(days[-1]).replace(tzinfo=UTC) + timedelta(days=1)
        return q.answer(rows, start, end, self.source)
