"""Timers for the many long-lived upstream streams, in shared buckets.

Every open stream needs one timer (its deadline and its idle watch, `HTTPEventStream`). A loop
timer handle is about 0.7 KB on uvloop (its Python object, arguments and libuv handle), 7 MB
at 10,000 open streams. Here a stream's due time is rounded up to the next `RESOLUTION`
boundary and streams due in the same slot share one loop timer: with 10,000 streams and a
30 s idle timeout that is at most 600 loop timers, and a stream's own cost is its entry in a
set. A timer fires at most `RESOLUTION` late, which no timeout the gateway applies (seconds)
notices.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Protocol

RESOLUTION = 0.05  # seconds per slot

log = logging.getLogger("gateway.providers")


class TimerOwner(Protocol):
    def on_timer(self) -> None: ...


class StreamTimers:
    """One per event loop (`for_running_loop`). `schedule` hands back the slot, which the
    owner keeps to `cancel` it; a fired slot is gone, so an owner forgets its slot when its
    `on_timer` is called."""

    __slots__ = ("_loop", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, tuple[asyncio.TimerHandle, set[TimerOwner]]] = {}

    def __len__(self) -> int:
        """Timers pending."""
        return sum(len(owners) for _, owners in self._slots.values())

    @property
    def loop_timers(self) -> int:
        return len(self._slots)

    def schedule(self, owner: TimerOwner, at: float) -> int:
        """Call `owner.on_timer()` at `at` (loop time), or at most `RESOLUTION` later."""
        slot = math.ceil(at / RESOLUTION)
        entry = self._slots.get(slot)
        if entry is None:
            handle = self._loop.call_at(slot * RESOLUTION, self._fire, slot)
            entry = self._slots[slot] = (handle, set())
        entry[1].add(owner)
        return slot

    def cancel(self, owner: TimerOwner, slot: int) -> None:
        entry = self._slots.get(slot)
        if entry is None:
            return
        handle, owners = entry
        owners.discard(owner)
        if not owners:
            handle.cancel()
            del self._slots[slot]

    def _fire(self, slot: int) -> None:
        entry = self._slots.pop(slot, None)
        if entry is None:
            return
        for owner in entry[1]:
            try:
                owner.on_timer()  # may schedule itself again, into a later slot
            except Exception:
                # One stream's failure must not keep the others in its slot from firing.
                log.exception("a stream timer failed")


_BY_LOOP: dict[asyncio.AbstractEventLoop, StreamTimers] = {}


def for_running_loop() -> StreamTimers:
    """The running loop's timers. A loop that has closed leaves its entry behind until the
    next call (tests run one loop after another)."""
    loop = asyncio.get_running_loop()
    timers = _BY_LOOP.get(loop)
    if timers is None:
        for old in [old for old in _BY_LOOP if old.is_closed()]:
            del _BY_LOOP[old]
        timers = _BY_LOOP[loop] = StreamTimers(loop)
    return timers
