"""Where the exact response cache keeps its answers: in this process (bounded by `max_mb`,
least recently used out first) or in the shared Redis (one string per entry, with its own
expiry, seen by every replica).

An entry is what the client was sent: a whole JSON body, or a stream's SSE events in order,
plus what the usage record of a hit needs (the model and provider that produced it, what it
cost). Redis is asked with single-key commands only (GET, SET with PX), so a Redis Cluster
serves the cache as well as one server does.
"""

from __future__ import annotations

import abc
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson

from gateway.metrics import CACHE_UNAVAILABLE
from gateway.store.redis import SharedRedis

log = logging.getLogger("gateway.cache")

KEY_PREFIX = "gw:cache:"
_MAGIC = b"gwc1\n"
# What an entry costs the memory backend beyond its bytes: the entry object, its key, its
# place in the LRU order. Counted so that many tiny entries cannot pass the bound either.
ENTRY_OVERHEAD = 256


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One stored answer: `body` for a whole answer, `events` (each one SSE event, as it was
    written to the client) for a stream."""

    model: str
    provider: str
    cost_usd: float  # what producing it cost: a hit's `saved_usd`
    body: bytes | None = None
    events: tuple[bytes, ...] | None = None

    @property
    def stream(self) -> bool:
        return self.events is not None

    @property
    def size(self) -> int:
        """Bytes the memory backend counts for it."""
        payload = len(self.body) if self.body is not None else 0
        for event in self.events or ():
            payload += len(event) + 8
        return payload + len(self.model) + len(self.provider) + ENTRY_OVERHEAD

    def to_bytes(self) -> bytes:
        """A JSON header line, then the payload as raw bytes (no JSON escaping of a large
        body): the events' lengths in the header say where each one ends."""
        events = self.events
        header = {
            "model": self.model,
            "provider": self.provider,
            "cost_usd": self.cost_usd,
            "lengths": None if events is None else [len(e) for e in events],
        }
        payload = self.body if events is None else b"".join(events)
        return b"".join((_MAGIC, orjson.dumps(header), b"\n", payload or b""))

    @classmethod
    def from_bytes(cls, raw: bytes) -> CachedAnswer | None:
        """None for anything that is not an entry this version wrote."""
        if not raw.startswith(_MAGIC):
            return None
        end = raw.find(b"\n", len(_MAGIC))
        if end < 0:
            return None
        try:
            header = orjson.loads(raw[len(_MAGIC) : end])
            payload = raw[end + 1 :]
            lengths = header["lengths"]
            model, provider = str(header["model"]), str(header["provider"])
            cost = float(header["cost_usd"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if lengths is None:
            return cls(model, provider, cost, body=payload)
        events: list[bytes] = []
        at = 0
        for length in lengths:
            if not isinstance(length, int) or length < 0 or at + length > len(payload):
                return None
            events.append(payload[at : at + length])
            at += length
        if at != len(payload):
            return None
        return cls(model, provider, cost, events=tuple(events))


class CacheBackend(abc.ABC):
    """`get` answers None for a miss and for a backend that cannot answer (the cache is then
    skipped, never an error to the client); `put` never raises."""

    @abc.abstractmethod
    async def get(self, key: str) -> CachedAnswer | None: ...

    @abc.abstractmethod
    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None: ...

    @property
    def available(self) -> bool:
        """False while the backend is known to be unreachable."""
        return True

    async def aclose(self) -> None:
        return None


class MemoryCache(CacheBackend):
    """In this process: never more than `max_bytes` (entries and their overhead), the least
    recently used entry evicted first, each entry dropped once its lifetime is over."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        # key → (expires at, answer); least recently used first.
        self._entries: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def lru_order(self) -> list[str]:
        """Least recently used first (for tests and the bench)."""
        return list(self._entries)

    async def get(self, key: str) -> CachedAnswer | None:
        return self.get_now(key)

    def get_now(self, key: str) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, answer = entry
        if time.monotonic() >= expires_at:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return answer

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        self.put_now(key, answer, ttl_s)

    def put_now(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        size = answer.size + len(key)
        if size > self.max_bytes:
            return  # larger than the whole cache: never stored
        self._drop(key)
        while self._entries and self._bytes + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        self._entries[key] = (time.monotonic() + ttl_s, answer)
        self._bytes += size

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1].size + len(key)


class RedisCache(CacheBackend):
    """In the shared Redis: `gw:cache:<digest>`, one string per entry, expiring by itself."""

    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis

    @property
    def available(self) -> bool:
        return not self._redis.client.breaker.open

    async def get(self, key: str) -> CachedAnswer | None:
        from redis.exceptions import RedisError

        try:
            # Raw bytes, not the client's decoded text: a stored body need not be UTF-8.
            raw = await self._redis.client.execute_command("GET", KEY_PREFIX + key, NEVER_DECODE=[])
        except (RedisError, OSError) as exc:
            _unavailable("get", exc)
            return None
        return CachedAnswer.from_bytes(raw) if isinstance(raw, bytes) else None

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.client.set(
                KEY_PREFIX + key, answer.to_bytes(), px=max(1, int(ttl_s * 1000))
            )
        except (RedisError, OSError) as exc:
            _unavailable("set", exc)


def _unavailable(op: str, exc: BaseException) -> None:
    from gateway.store.breaker import UNREACHABLE, RedisUnavailable

    CACHE_UNAVAILABLE.labels(op).inc()
    # An outage is logged by the breaker, once as it starts and once as it ends; anything
    # else (Redis answering with an error) is worth a line of its own.
    if not isinstance(exc, (RedisUnavailable, *UNREACHABLE)):
        log.warning("response cache: redis error", extra={"op": op, "error": str(exc)})


def build_cache(backend: str, max_mb: float, redis: SharedRedis | None) -> CacheBackend:
    if backend == "redis" and redis is not None:
        return RedisCache(redis)
    return MemoryCache(int(max_mb * 1024 * 1024))
