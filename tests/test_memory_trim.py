"""Memory goes back after a peak (gateway.pipeline.memory): the trimmer's rules (quiet after
serving, never under load, off when the config says so), that a trim collects cyclic garbage
first, that `gateway serve` runs on glibc's malloc unless told otherwise, that `malloc_trim`
really returns a fragmented heap's free pages to the OS, and that the gateway counts what it
serves into it."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.pipeline.memory import MemoryTrimmer, _malloc_trim, allocator_environment
from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config, free_port, merged
from tests.gateway_process import start_gateway_process

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


async def trimmed(trimmer: MemoryTrimmer, times: int) -> bool:
    """Whether the trimmer reaches `times` trims within a second: a trim collects garbage
    first, which in a test process full of objects takes longer than a check's 20 ms."""
    for _ in range(100):
        if trimmer.trims >= times:
            return trimmer.trims == times
        await asyncio.sleep(0.01)
    return False


@needs_malloc_trim
async def test_trims_once_quiet_after_serving_and_not_again_until_more_is_served() -> None:
    load = Load()
    trimmer = MemoryTrimmer(lambda: load.in_flight, check_s=0.02, quiet_checks=2)
    try:
        await run_checks(trimmer, 6)
        assert trimmer.trims == 0  # nothing served since start: nothing to give back
        trimmer.served()
        assert await trimmed(trimmer, 1) and trimmer.served_since_trim == 0
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
        assert await trimmed(trimmer, 1)
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
        assert await trimmed(trimmer, 1)
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


class Cycle:
    """A dead request's shape after an exception: an object that refers to itself."""

    def __init__(self) -> None:
        self.me = self


@needs_malloc_trim
async def test_a_trim_collects_cyclic_garbage_first() -> None:
    trimmer = MemoryTrimmer(lambda: 0)
    gc.disable()  # so that only the trim can collect it
    try:
        garbage = Cycle()
        alive = weakref.ref(garbage)
        del garbage
        assert alive() is not None  # refcounting alone cannot free a cycle
        await trimmer.trim_now()
        assert alive() is None
    finally:
        gc.enable()


def test_serve_chooses_glibc_malloc_unless_trimming_is_off_or_an_allocator_was_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    chosen = allocator_environment(trim_memory=True)
    if _malloc_trim() is None:
        assert chosen is None  # nothing could give the pages back: keep CPython's allocator
        return
    assert chosen is not None and chosen["PYTHONMALLOC"] == "malloc"
    assert chosen["PATH"] == os.environ["PATH"]  # the rest of the environment is kept
    assert allocator_environment(trim_memory=False) is None
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")
    assert allocator_environment(trim_memory=True) is None


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@needs_malloc_trim
@pytest.mark.parametrize("trim_memory", [True, False])
async def test_gateway_serve_runs_itself_on_malloc_in_the_same_process(
    tmp_path: Path, trim_memory: bool
) -> None:
    """The re-run happens in place: the process the supervisor started is the one serving."""
    config = tmp_path / "gateway.yaml"
    raw = merged(base_config("http://127.0.0.1:9/v1"), server={"trim_memory": trim_memory})
    config.write_text(yaml.safe_dump(raw))
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
    process = await start_gateway_process(config, free_port(), env=environment)
    try:
        assert process.returncode is None
        assert environment_of(process.pid).get("PYTHONMALLOC") == (
            "malloc" if trim_memory else None
        )
    finally:
        process.terminate()
        await process.wait()


GATEWAY_TYPES = {"RequestState", "RequestLease", "AttemptLoop", "ModelGate", "TokenEstimate"}


async def test_a_finished_request_leaves_no_cyclic_garbage(start_gateway: StartGateway) -> None:
    """Each answered request's objects go by reference counting as it ends; a cycle among them
    would leave thousands waiting for the (rarely run) cyclic GC after a peak. (A failed
    attempt still leaves its exception's traceback cycle, with the request in it, to the GC.)"""
    server: GatewayServer = await start_gateway(base_config("http://127.0.0.1:9/v1"))
    gc.collect()
    gc.disable()  # nothing is collected in between: what is garbage stays to be seen
    try:
        async with aiohttp.ClientSession() as client:
            for stream in (False, True, False):
                async with client.post(
                    server.url + "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {APP_KEY}"},
                    json={
                        "model": "demo",
                        "stream": stream,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                ) as answer:
                    assert answer.status == 200
                    await answer.read()
        await asyncio.sleep(0.05)  # the last request's settling
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if type(o).__name__ in GATEWAY_TYPES]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert server.process.memory.served_since_trim == 3
    assert left == []
