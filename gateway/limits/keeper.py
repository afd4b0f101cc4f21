"""Keeps this process's concurrency leases alive while their requests live.

One background task renews every live lease in one call per tick, at a third of the lease TTL,
so a long stream keeps its lease and a process that dies stops renewing: its leases expire
within one TTL and nobody has to flush anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.limits.base import Limiter

log = logging.getLogger("gateway.limits")


class LeaseKeeper:
    def __init__(self, limiter: Limiter, lease_ttl_s: float) -> None:
        self.limiter = limiter
        self.interval_s = max(0.05, lease_ttl_s / 3)
        self._live: dict[tuple[str, str], None] = {}
        self._task: asyncio.Task[None] | None = None

    def hold(self, subject: str, lease_id: str) -> None:
        self._live[(subject, lease_id)] = None

    def drop(self, subject: str, lease_id: str) -> None:
        self._live.pop((subject, lease_id), None)

    def __len__(self) -> int:
        return len(self._live)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="lease-keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            if self._live:
                try:
                    await self.limiter.renew(list(self._live))
                except Exception:  # renew() should not raise; a keeper must never die
                    log.warning("renewing leases failed", exc_info=True)
