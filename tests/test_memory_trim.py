"""Memory goes back after a peak (gateway.pipeline.memory): the trimmer's rules (quiet after
serving, never under load, off when the config says so), that `malloc_trim` really returns a
fragmented heap's free pages to the OS, and that the gateway counts what it serves into it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from gateway.pipeline.memory import MemoryTrimmer, _malloc_trim
from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config, merged

needs_malloc_trim = pytest.mark.skipif(
    _malloc_trim() is None, reason="this libc has no malloc_trim (not glibc)"
)


class Load:
    """What the trimmer is told: how many requests are in flight now."""

    def __init__(self) -> None:
        self.in_flight = 0


async def run_checks(trimmer: MemoryTrimmer, checks: int) -> None:
    trimmer.start()
    await asyncio.sleep(0.02 * checks + 0.01)


@needs_malloc_trim
async def test_trims_once_quiet_after_serving_and_not_again_until_more_is_served() -> None:
    load = Load()
    trimmer = MemoryTrimmer(lambda: load.in_flight, check_s=0.02, quiet_checks=2)
    try:
        await run_checks(trimmer, 6)
        assert trimmer.trims == 0  # nothing served since start: nothing to give back
        trimmer.served()
        await asyncio.sleep(0.02 * 3 + 0.01)
        assert trimmer.trims == 1 and trimmer.served_since_trim == 0
        await asyncio.sleep(0.02 * 6)
        assert trimmer.trims == 1  # quiet, but nothing new served
    finally:
        await trimmer.stop()


@needs_malloc_trim
async def test_never_trims_while_requests_are_in_flight() -> None:
    load = Load()
    load.in_flight = 3
    trimmer = MemoryTrimmer(lambda: load.in_flight, check_s=0.02, quiet_checks=2)
    try:
        trimmer.served()
        await run_checks(trimmer, 10)
        assert trimmer.trims == 0
        load.in_flight = 0
        await asyncio.sleep(0.02 * 3 + 0.01)
        assert trimmer.trims == 1
    finally:
        await trimmer.stop()


@needs_malloc_trim
async def test_off_in_the_config_means_no_trim() -> None:
    enabled = False
    trimmer = MemoryTrimmer(lambda: 0, lambda: enabled, check_s=0.02, quiet_checks=1)
    try:
        trimmer.served()
        await run_checks(trimmer, 6)
        assert trimmer.trims == 0
        enabled = True  # a reload turning it on applies at the next check
        await asyncio.sleep(0.02 * 2 + 0.01)
        assert trimmer.trims == 1
    finally:
        await trimmer.stop()


def rss_kb() -> int:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@needs_malloc_trim
async def test_malloc_trim_returns_a_fragmented_heaps_free_pages() -> None:
    """The case the trimmer exists for: buffers freed all over glibc's heap, with a few still
    alive pinning it, so the heap top cannot shrink by itself."""
    trimmer = MemoryTrimmer(lambda: 0)
    # 2 KiB buffers come from malloc (CPython's own allocator stops at 512 bytes) and stay
    # under glibc's mmap threshold, so they live in its heap, as request bodies do.
    buffers = [bytearray(2048) for _ in range(60_000)]  # about 120 MB
    pinned = buffers[::64]
    del buffers
    before = rss_kb()
    await trimmer.trim_now()
    after = rss_kb()
    assert trimmer.trims == 1
    assert before - after > 60_000, (before, after)  # most of the freed 120 MB went back
    assert len(pinned) == 938


async def test_the_gateway_counts_what_it_serves_into_the_trimmer(
    start_gateway: StartGateway,
) -> None:
    server: GatewayServer = await start_gateway(base_config("http://127.0.0.1:9/v1"))
    trimmer = server.process.memory
    assert trimmer.served_since_trim == 0
    async with aiohttp.ClientSession() as client:
        for _ in range(3):
            async with client.post(
                server.url + "/v1/chat/completions",
                headers={"Authorization": f"Bearer {APP_KEY}"},
                json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
            ) as answer:
                assert answer.status == 200
                await answer.read()
    assert trimmer.served_since_trim == 3


async def test_server_trim_memory_false_turns_it_off(start_gateway: StartGateway) -> None:
    on = await start_gateway(base_config("http://127.0.0.1:9/v1"))
    assert on.process.memory.enabled is True  # the default
    raw = merged(base_config("http://127.0.0.1:9/v1"), server={"trim_memory": False})
    off = await start_gateway(raw)
    assert off.process.memory.enabled is False
