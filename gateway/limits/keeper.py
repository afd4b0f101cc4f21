"""Keeps this process's concurrency leases alive while their requests live.

One background task renews every live lease in one call per tick, at a third of the lease TTL,
so a long stream keeps its lease and a process that dies stops renewing: its leases expire
within one TTL and nobody has to flush anything.
"""

from __future__ import annotations

from gateway.limits.base import Limiter
from gateway.periodic import Periodic


class LeaseKeeper:
    def __init__(self, limiter: Limiter, lease_ttl_s: float) -> None:
        self.limiter = limiter
        self.interval_s = max(0.05, lease_ttl_s / 3)
        self._live: dict[tuple[str, str], None] = {}
        self._renewer = Periodic("lease-keeper", self.interval_s, self._renew)

    def hold(self, subject: str, lease_id: str) -> None:
        self._live[(subject, lease_id)] = None

    def drop(self, subject: str, lease_id: str) -> None:
        self._live.pop((subject, lease_id), None)

    def start(self) -> None:
        self._renewer.start()

    async def stop(self) -> None:
        await self._renewer.stop()

    async def _renew(self) -> None:
        if self._live:
            await self.limiter.renew(list(self._live))
