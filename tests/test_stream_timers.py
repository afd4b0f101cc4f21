"""The shared stream timers: owners due in the same 50 ms slot share one loop timer, a
cancelled owner is not called, an emptied slot's loop timer is cancelled, and one owner's
failure does not stop the others in its slot."""

from __future__ import annotations

import asyncio

import pytest

from gateway.providers.stream_timers import RESOLUTION, StreamTimers, for_running_loop


class Owner:
    def __init__(self, log: list[tuple[str, float]], name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    def on_timer(self) -> None:
        self.log.append((self.name, asyncio.get_running_loop().time()))
        if self.fail:
            raise RuntimeError("boom")


async def test_owners_in_one_slot_share_a_loop_timer_and_fire_on_time() -> None:
    loop = asyncio.get_running_loop()
    timers = StreamTimers(loop)
    fired: list[tuple[str, float]] = []
    at = loop.time() + 0.2
    owners = [Owner(fired, f"o{i}") for i in range(1000)]
    slots = {timers.schedule(owner, at + (i % 3) * 0.001) for i, owner in enumerate(owners)}
    assert len(timers) == 1000
    assert timers.loop_timers == len(slots) <= 2  # 1,000 owners, one or two loop timers
    await asyncio.sleep(0.2 + 2 * RESOLUTION + 0.05)
    assert len(fired) == 1000
    assert all(at <= when <= at + RESOLUTION + 0.05 for _, when in fired)
    assert len(timers) == 0 and timers.loop_timers == 0


async def test_a_cancelled_owner_is_not_called_and_an_empty_slot_drops_its_timer() -> None:
    loop = asyncio.get_running_loop()
    timers = StreamTimers(loop)
    fired: list[tuple[str, float]] = []
    a, b = Owner(fired, "a"), Owner(fired, "b")
    slot_a = timers.schedule(a, loop.time() + 0.1)
    slot_b = timers.schedule(b, loop.time() + 0.5)
    timers.cancel(b, slot_b)
    assert timers.loop_timers == 1
    timers.cancel(a, slot_a)
    assert timers.loop_timers == 0
    timers.cancel(a, slot_a)  # twice is harmless
    await asyncio.sleep(0.2)
    assert fired == []


async def test_one_owner_failing_does_not_stop_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    timers = for_running_loop()
    assert for_running_loop() is timers
    fired: list[tuple[str, float]] = []
    at = loop.time() + 0.05
    for owner in (Owner(fired, "bad", fail=True), Owner(fired, "good")):
        timers.schedule(owner, at)
    await asyncio.sleep(0.05 + 2 * RESOLUTION)
    assert sorted(name for name, _ in fired) == ["bad", "good"]
    assert "a stream timer failed" in caplog.text
