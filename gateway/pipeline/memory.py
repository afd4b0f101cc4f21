"""Giving memory back to the OS after a peak.

After thousands of streams end, the gateway's RSS stays near its peak, for three reasons, each
handled here or at start:

- Cyclic garbage waits. Streams that end by an exception (a client leaving, an upstream reset)
  leave tracebacks whose frames hold the request's whole state in a cycle; the gateway runs
  young collections rarely (server/serving.py `tune_gc`) and full ones more rarely still, so
  after a peak thousands of dead requests can sit uncollected. The trim collects them first.
- CPython's small-object allocator (pymalloc) gives an arena (1 MiB) back only when every
  object in it is dead, and a few long-lived objects made during the peak (pooled connections,
  caches) pin most of them: measured, 2,000 streams left 68 arenas for 22 MB of live objects.
  So `gateway serve` runs the process on glibc's malloc (`PYTHONMALLOC=malloc`, see
  `allocator_environment`), whose free pages `malloc_trim` can return one by one.
- glibc keeps freed pages in its heaps for reuse. Once the process has gone quiet after
  serving, it asks glibc to return them (`malloc_trim(0)`), in a worker thread so the event
  loop never waits on it.

Nothing leaks (repeated peaks do not grow it), but an idle replica holding twice its idle memory
looks like one to its orchestrator. Under steady load nothing is trimmed (the pages would be
taken again at once); on a libc without `malloc_trim` (musl, macOS) none of this runs.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
from collections.abc import Callable

log = logging.getLogger("gateway.memory")

CHECK_S = 5.0  # how often the trimmer looks
QUIET_CHECKS = 2  # checks in a row with nothing in flight before a trim


def _malloc_trim() -> Callable[[], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


ALLOCATOR_VARIABLE = "PYTHONMALLOC"


def allocator_environment(trim_memory: bool) -> dict[str, str] | None:
    """The environment to re-run `gateway serve` with so that the process allocates from glibc's
    malloc, or None to run on as it is: when trimming is off, when this libc cannot trim, or
    when the operator chose an allocator already (`PYTHONMALLOC` set, even to `pymalloc`).

    Measured after 2,000 streams: RSS back to 1.14x of idle within 15 s instead of 1.66x, for
    about 8% more instructions per request (README, "Memory after a peak")."""
    if not trim_memory or ALLOCATOR_VARIABLE in os.environ or _malloc_trim() is None:
        return None
    return {**os.environ, ALLOCATOR_VARIABLE: "malloc"}


class MemoryTrimmer:
    """Trims once the process is quiet (nothing in flight for `QUIET_CHECKS` checks) after
    serving at least one request since the last trim, while `enabled()` says so."""

    def __init__(
        self,
        in_flight: Callable[[], int],
        enabled: Callable[[], bool] = lambda: True,
        check_s: float = CHECK_S,
        quiet_checks: int = QUIET_CHECKS,
    ) -> None:
        self._in_flight = in_flight
        self._enabled = enabled  # read at each check: a config reload applies at once
        self._check_s = check_s
        self._quiet_checks = quiet_checks
        self._trim = _malloc_trim()
        self._task: asyncio.Task[None] | None = None
        self.served_since_trim = 0
        self.trims = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    @property
    def enabled(self) -> bool:
        return self._enabled()

    def served(self) -> None:
        self.served_since_trim += 1

    def start(self) -> None:
        if self._trim is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        quiet = 0
        while True:
            await asyncio.sleep(self._check_s)
            if self._in_flight() > 0:
                quiet = 0
                continue
            quiet += 1
            if quiet >= self._quiet_checks and self.served_since_trim > 0 and self._enabled():
                await self.trim_now()
                quiet = 0

    async def trim_now(self) -> None:
        if self._trim is None:
            return
        self.served_since_trim = 0
        # In the loop's thread (a collection holds the interpreter anyway); quiet, so cheap.
        gc.collect()
        await asyncio.to_thread(self._trim)
        self.trims += 1
        log.debug("returned free memory to the OS", extra={"trims": self.trims})
