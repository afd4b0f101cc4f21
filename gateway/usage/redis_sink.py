"""The Redis usage sink: a stream of records plus per-day aggregate hashes (see `layout`).

One batch is one pipeline (no MULTI, so Redis Cluster works too). The batch is first summed in
Python per day and tuple, so each distinct hash field gets one increment, not one per record.
Then small Lua scripts write it, each touching ONE key (cluster-safe): one call appends the
records to the stream (`XADD ... MAXLEN ~ n` each), one per day hash applies its `HINCRBY`s /
`HINCRBYFLOAT`s and `EXPIRE`, in chunks so that no call holds Redis for long.

Why scripts with packed arguments rather than one pipelined command per increment: redis-py
spends tens of microseconds of event-loop time packing and parsing each command, and a batch of
500 records with distinct users is thousands of increments: hundreds of milliseconds of loop
time per batch, taken from the streams being relayed. Packed into a few strings (entries split
by \\x1e, field and value by \\x1d) they cost about a microsecond each.

Several replicas write to the same keys; increments add up. A pipeline that fails half way
(the connection lost) may have applied part of the batch; the recorder retries the whole batch,
so after a connection failure a batch can be counted twice (at-least-once). Calls Redis refuses
(a key of the wrong type, say) are logged, not retried: the rest of the pipeline was applied,
and retrying would count it twice and fail the same way forever.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis

from gateway.store.breaker import RedisClient
from gateway.store.scripts import LuaScript, ScriptCall, run_pipelined
from gateway.usage.aggregate import Agg, DimTuple, dims_of
from gateway.usage.layout import (
    DEFAULT_TTL_DAYS,
    ENTRY_SEP,
    PAIR_SEP,
    STREAM_FIELD,
    STREAM_KEY,
    agg_key,
    field_prefix,
)
from gateway.usage.record import UsageRecord
from gateway.usage.sinks import UsageSink

log = logging.getLogger("gateway.usage")

# KEYS[1]: the stream. ARGV: maxlen, field name, the records' JSON joined by \30 (\x1e; JSON
# never holds a raw control character).
_APPEND = LuaScript("""
local n = 0
for json in string.gmatch(ARGV[3], '[^\\30]+') do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', ARGV[2], json)
  n = n + 1
end
return n
""")

# KEYS[1]: a day hash. ARGV: ttl in seconds, integer increments, float increments; each a
# string of `field \29 value` entries joined by \30.
_INCREMENT = LuaScript("""
local key = KEYS[1]
for field, value in string.gmatch(ARGV[2], '([^\\30]+)\\29([^\\30]+)') do
  redis.call('HINCRBY', key, field, value)
end
for field, value in string.gmatch(ARGV[3], '([^\\30]+)\\29([^\\30]+)') do
  redis.call('HINCRBYFLOAT', key, field, value)
end
redis.call('EXPIRE', key, ARGV[1])
return 0
""")

CHUNK = 500  # increments per script call: one call holds Redis for a millisecond or so


class RedisUsageSink(UsageSink):
    """Writes batches to the usage stream and the per-day aggregate hashes."""

    def __init__(
        self,
        client: RedisClient,
        *,
        stream_maxlen: int = 1_000_000,
        ttl_days: int = DEFAULT_TTL_DAYS,
        base_key: str = STREAM_KEY,
        close_client: bool = False,
        name: str = "redis",
    ) -> None:
        """`close_client`: whether `aclose` closes the client (False when it is shared)."""
        self.name = name
        self.client = client
        self.stream_maxlen = stream_maxlen
        self.ttl_s = ttl_days * 86400
        self.base_key = base_key
        self.close_client = close_client

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisUsageSink:
        client = Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        return cls(client, close_client=True, **kwargs)

    async def write(self, records: list[UsageRecord]) -> None:
        if not records:
            return
        per_key = _increments(records, self.base_key)
        stream = ENTRY_SEP.encode().join(rec.to_json() for rec in records)
        calls = [ScriptCall(_APPEND, [self.base_key], [self.stream_maxlen, STREAM_FIELD, stream])]
        for key, (ints, floats) in per_key.items():
            for start in range(0, max(len(ints), len(floats)), CHUNK):
                calls.append(
                    ScriptCall(
                        _INCREMENT,
                        [key],
                        [
                            self.ttl_s,
                            ENTRY_SEP.join(ints[start : start + CHUNK]),
                            ENTRY_SEP.join(floats[start : start + CHUNK]),
                        ],
                    )
                )
        # One pipeline; scripts a server lost (a restart, a Cluster master that never ran
        # them) are loaded and only the refused calls sent again.
        results = await run_pipelined(self.client, calls)
        refused = [r for r in results if isinstance(r, Exception)]
        if refused:
            log.error(
                "redis refused usage writes",
                extra={"refused": len(refused), "calls": len(results), "error": str(refused[0])},
            )

    async def aclose(self) -> None:
        if self.close_client:
            await self.client.aclose()


def _increments(
    records: list[UsageRecord], base_key: str
) -> dict[str, tuple[list[str], list[str]]]:
    """Per day hash: its integer and float increments as `field \\x1d value` entries."""
    with_user: dict[tuple[str, DimTuple], Agg] = {}
    for rec in records:
        slot = (rec.day, dims_of(rec))
        agg = with_user.get(slot)
        if agg is None:
            with_user[slot] = agg = Agg()
        agg.add_record(rec)
    without_user: dict[tuple[str, DimTuple], Agg] = {}
    for (day, dims), agg in with_user.items():
        slot = (day, (*dims[:4], None))
        total = without_user.get(slot)
        if total is None:
            without_user[slot] = total = Agg()
        total.merge(agg)
    per_key: dict[str, tuple[list[str], list[str]]] = {}
    for aggs, user_hash in ((without_user, False), (with_user, True)):
        for (day, dims), agg in aggs.items():
            ints, floats = per_key.setdefault(agg_key(day, user_hash, base_key), ([], []))
            prefix = field_prefix(dims)
            for metric, value in agg.metrics():
                entry = f"{prefix}{metric}{PAIR_SEP}{value!r}"
                (ints if isinstance(value, int) else floats).append(entry)
    return per_key
