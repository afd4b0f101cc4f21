"""`GatewayProcess`: what one gateway process keeps across config reloads.

The current `Runtime` (swapped whole on reload), the limits backend and cooldown store (whose
counts must survive a reload), the lease keeper, requests in flight, and the settlements still
being written when a request has already answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from gateway.config import CacheConfig
from gateway.limits.base import Limiter
from gateway.limits.cooldowns import CooldownStore, MemoryCooldowns
from gateway.limits.keeper import LeaseKeeper
from gateway.pipeline.cache_plan import ResponseCache, build_response_cache
from gateway.pipeline.drain import Drain
from gateway.pipeline.keys import RuntimeKeys
from gateway.pipeline.lease import GiveBack, Outcome
from gateway.pipeline.memory import MemoryTrimmer
from gateway.pipeline.pending import PendingClients
from gateway.pipeline.runtime import Runtime
from gateway.store.redis import SharedRedis
from gateway.store.responses import ResponseStore, build_response_store
from gateway.usage.service import UsageService

log = logging.getLogger("gateway.process")

USAGE_FLUSH_S = 10.0  # at shutdown, how long the sinks may take to take every record


class GatewayProcess:
    def __init__(
        self,
        runtime: Runtime,
        limiter: Limiter,
        cooldowns: CooldownStore | None = None,
        usage: UsageService | None = None,
        redis: SharedRedis | None = None,
    ) -> None:
        self.redis = redis  # the one Redis client, shared by limits, cooldowns and usage
        self.current = runtime
        self.draining = False
        self.limiter = limiter
        self.cooldowns: CooldownStore = cooldowns or MemoryCooldowns()
        self.leases = LeaseKeeper(limiter, runtime.config.limits.lease_ttl_s)
        config = runtime.config
        self.usage = usage or UsageService(config.usage, redis)
        # Stored Responses; Redis or memory as the config at start says (a reload keeps it).
        self.responses: ResponseStore = build_response_store(redis if config.redis else None)
        # The response cache, made when a config first has a `cache:` section; its backend
        # and size stay as they were made until the process restarts.
        self.cache: ResponseCache | None = None
        # Keys made with /admin/keys (the runtime's authenticator reads them).
        self.keys = runtime.auth.runtime_keys or RuntimeKeys(None)
        self.in_flight = 0
        self.drain = Drain()
        self.memory = MemoryTrimmer(
            lambda: self.in_flight, lambda: self.current.config.server.trim_memory
        )
        # Connections and bodies per client address not yet complete (server.protocol).
        self.pending = PendingClients(lambda: self.current.config.server.max_pending_per_address)
        self._background: set[asyncio.Task[None]] = set()
        # What every request gives back: made once, not once per request (a stream keeps its
        # lease, and so every give-back on it, while it lasts).
        self.slot_give_back: GiveBack = self._leave_slot
        self._runtime_give_back: tuple[Runtime, GiveBack] | None = None

    def response_cache(self, config: CacheConfig) -> ResponseCache:
        if self.cache is None:
            self.cache = build_response_cache(config, self.redis)
        return self.cache

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` without making the request wait for it; awaited at shutdown."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    def swap(self, runtime: Runtime) -> None:
        """Make `runtime` current at once; the old one closes what only it used as soon as
        its last request ends."""
        old, self.current = self.current, runtime
        if old.retire(runtime):
            self.in_background(old.close_retired())

    def _leave_slot(self, _outcome: Outcome) -> None:
        self.in_flight -= 1  # taken by `admission.take_process_slot`

    def request_done_give_back(self, runtime: Runtime) -> GiveBack:
        """The give-back of a request begun on `runtime`: the same for all of them (the one
        made last is kept; a reload makes one for its runtime)."""
        made = self._runtime_give_back
        if made is not None and made[0] is runtime:
            return made[1]
        give_back: GiveBack = lambda _: self.request_done(runtime)  # noqa: E731
        self._runtime_give_back = (runtime, give_back)
        return give_back

    def request_done(self, runtime: Runtime) -> None:
        if runtime.leave():
            self.in_background(runtime.close_retired())

    async def wait_idle(self, within_s: float) -> bool:
        """Wait until no request is in flight; False when `within_s` passed first."""
        deadline = asyncio.get_running_loop().time() + within_s
        while self.in_flight > 0:
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def start(self) -> None:
        await self.usage.start()
        await self.keys.start()
        self.leases.start()
        self.memory.start()

    async def aclose(self) -> None:
        await self.memory.stop()
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self.usage.aclose(USAGE_FLUSH_S)
        await self.leases.stop()
        await self.keys.aclose()
        await self.limiter.aclose()
        await self.cooldowns.aclose()
        await self.current.aclose()
        if self.redis is not None:
            await self.redis.aclose()  # last: every user of it is closed
