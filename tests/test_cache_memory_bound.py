"""The memory backend of the response cache and the stored entry format, without a gateway:
the byte count never passes `max_mb` however many unique entries go through it, the least
recently used entry goes first, expired entries are gone, and an entry survives its trip
through bytes (as Redis keeps it) exactly."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given
from hypothesis import strategies as st

from gateway.store.cache import ENTRY_OVERHEAD, CachedAnswer, MemoryCache


def answer(size: int, tag: str = "") -> CachedAnswer:
    return CachedAnswer("gpt-up", "up", 0.001, body=(tag.encode() + b"x" * size)[:size])


def test_unique_entries_never_grow_the_cache_past_its_bound() -> None:
    cache = MemoryCache(64 * 1024)
    rng = random.Random(15)
    for i in range(20_000):  # what a long run of unique requests does, in a tenth of a second
        cache.put_now(f"key-{i}", answer(rng.randint(10, 4000)), ttl_s=60)
        assert cache.size_bytes <= cache.max_bytes
    assert cache.evictions > 19_000
    # The accounting is exact: what it counts is what it holds.
    held = sum(answer_size(cache, key) for key in cache.lru_order())
    assert held == cache.size_bytes


def answer_size(cache: MemoryCache, key: str) -> int:
    found = cache.get_now(key)
    assert found is not None
    return found.size + len(key)


def test_the_least_recently_used_entry_is_evicted_first() -> None:
    one = answer(1000)
    cache = MemoryCache(3 * (one.size + len("key-0")))
    for i in range(3):
        cache.put_now(f"key-{i}", answer(1000), ttl_s=60)
    assert cache.get_now("key-0") is not None  # key-0 is now the most recently used
    cache.put_now("key-3", answer(1000), ttl_s=60)
    assert cache.lru_order() == ["key-2", "key-0", "key-3"]  # key-1 went first
    cache.put_now("key-2", answer(1000), ttl_s=60)  # replacing counts as a use
    cache.put_now("key-4", answer(1000), ttl_s=60)
    assert cache.lru_order() == ["key-3", "key-2", "key-4"]


def test_an_entry_larger_than_the_cache_is_never_stored_and_small_ones_pay_overhead() -> None:
    cache = MemoryCache(10_000)
    cache.put_now("big", answer(20_000), ttl_s=60)
    assert len(cache) == 0 and cache.size_bytes == 0
    for i in range(1000):  # empty bodies still cost their overhead: they cannot pile up
        cache.put_now(f"k{i}", answer(0), ttl_s=60)
    assert len(cache) <= 10_000 // ENTRY_OVERHEAD


def test_expired_entries_are_not_answered() -> None:
    async def run() -> None:
        cache = MemoryCache(10_000)
        await cache.put("k", answer(10), ttl_s=0.05)
        assert await cache.get("k") is not None
        await asyncio.sleep(0.06)
        assert await cache.get("k") is None
        assert cache.size_bytes == 0

    asyncio.run(run())


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=20),
    st.binary(max_size=500),
    st.text(max_size=20),
)
def test_entries_survive_their_trip_through_bytes(
    events: list[bytes], body: bytes, model: str
) -> None:
    stream = CachedAnswer(model, "up", 0.25, events=tuple(events))
    whole = CachedAnswer(model, "up", 0.5, body=body)
    assert CachedAnswer.from_bytes(stream.to_bytes()) == stream
    assert CachedAnswer.from_bytes(whole.to_bytes()) == whole
    assert CachedAnswer.from_bytes(b"not an entry") is None
    if any(events):  # a cut entry (its last byte lost) is not taken for a whole one
        assert CachedAnswer.from_bytes(stream.to_bytes()[:-1]) is None
