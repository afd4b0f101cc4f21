"""What the response cache keeps per process (its backend, the misses being fetched now)
and per request (`CachePlan`: what the client's headers ask, the key once routed). Apart from
`pipeline.cache` so that the request state can hold a plan without importing the lookup."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.config import CacheConfig
from gateway.errors import InvalidRequest
from gateway.store.cache import CacheBackend, CachedAnswer, build_cache
from gateway.store.redis import SharedRedis

TTL_HEADER = "x-gateway-cache-ttl"
# A stream or answer larger than this share of the memory bound is relayed but not stored.
MAX_ENTRY_FRACTION = 0.25


class ResponseCache:
    """The process's cache: its backend (kept across config reloads) and the misses being
    fetched now, so that concurrent identical misses make one upstream call."""

    def __init__(self, backend: CacheBackend, max_entry_bytes: int) -> None:
        self.backend = backend
        self.max_entry_bytes = max_entry_bytes
        self.flights: dict[str, asyncio.Future[CachedAnswer | None]] = {}


def build_response_cache(config: CacheConfig, redis: SharedRedis | None) -> ResponseCache:
    max_bytes = int(config.max_mb * 1024 * 1024)
    return ResponseCache(
        build_cache(config.backend, config.max_mb, redis), int(max_bytes * MAX_ENTRY_FRACTION)
    )


@dataclass(slots=True)
class CachePlan:
    """What the cache does for one request: from the client's headers first (`lookup`,
    `store`, `ttl_s`), then, once routed, its key and whether it leads a flight."""

    lookup: bool = True
    store: bool = True
    ttl_s: float | None = None  # x-gateway-cache-ttl: a shorter lifetime for what it stores
    key: str = ""
    cache: ResponseCache | None = None
    flight: asyncio.Future[CachedAnswer | None] | None = field(default=None, repr=False)

    def publish(self, answer: CachedAnswer | None) -> None:
        """Wake the requests waiting on this one's answer (None: there is none to share)."""
        flight, self.flight = self.flight, None
        if flight is None or self.cache is None:
            return
        if self.cache.flights.get(self.key) is flight:
            del self.cache.flights[self.key]
        if not flight.done():
            flight.set_result(answer)


def read_cache_headers(headers: Mapping[str, str]) -> CachePlan:
    """`Cache-Control: no-cache` (no lookup), `no-store` (not stored), `x-gateway-cache-ttl`.
    Called only when the cache is on."""
    plan = CachePlan()
    control = headers.get("Cache-Control")
    if control:
        directives = {part.strip().lower() for part in control.split(",")}
        plan.lookup = "no-cache" not in directives
        plan.store = "no-store" not in directives
    ttl = headers.get(TTL_HEADER)
    if ttl is not None:
        try:
            seconds = float(ttl)
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds == float("inf"):
            raise InvalidRequest(
                f"Invalid '{TTL_HEADER}' header: expected a positive number of seconds, "
                f"got {ttl[:40]!r}."
            )
        plan.ttl_s = seconds
    return plan
