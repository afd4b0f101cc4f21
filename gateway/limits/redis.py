"""The limiter shared by every replica: Redis, one atomic Lua script per admission.

Keys, all hash-tagged with the subject so one subject's keys share a Redis Cluster slot:
- `gw:{<subject>}:rpm`     ZSET  admission id → admission time (ms, Redis TIME)
- `gw:{<subject>}:tpm`     ZSET  reservation id → reservation time (ms)
- `gw:{<subject>}:tpm:n`   HASH  reservation id → tokens, and `#sum` → their total
- `gw:{<subject>}:leases`  ZSET  lease id → expiry (ms)
Every key carries a PEXPIRE a little past its newest entry, so idle subjects vanish.

Scripts are run with EVALSHA; after a NOSCRIPT (Redis restarted or flushed) they are loaded
again and the call is repeated. Any Redis failure is `LimiterUnavailable` from admit, in_flight
and ping; settle and renew log it and leave the entries to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

from gateway.limits import quota as blocks
from gateway.limits.base import (
    WINDOW_S,
    Admission,
    Limiter,
    LimiterUnavailable,
    LimitSpec,
    nothing_to_ask,
)
from gateway.limits.batcher import ScriptBatcher
from gateway.limits.budgets import BudgetCharge, BudgetHold, BudgetState, keep_s
from gateway.limits.memory import MIN_CONCURRENCY_WAIT_S, budget_refusal, refused
from gateway.limits.quota import LOCAL, QuotaLease, SubjectQuota, leasable
from gateway.periodic import Periodic
from gateway.store.breaker import Breaker, RedisClient, RedisUnavailable
from gateway.store.scripts import LuaScript, ScriptCall

__all__ = ["LuaScript", "RedisLimiter", "ScriptBatcher", "ScriptCall"]

log = logging.getLogger("gateway.limits.redis")

# Keys outlive their newest entry by this much, so that a key never vanishes under an entry
# that still counts (clock granularity, scripts run back to back).
KEEP_MS = 1000.0
# Errors that mean "Redis cannot be asked now". OSError covers socket errors and timeouts that
# escape redis-py's own classes.
BACKEND_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)


ADMIT = LuaScript.packaged(__package__, "admit.lua")
SETTLE = LuaScript.packaged(__package__, "settle.lua")
RENEW = LuaScript.packaged(__package__, "renew.lua")
IN_FLIGHT = LuaScript.packaged(__package__, "in_flight.lua")
# Redis Cluster only: the budgets across keys live in a slot of their own (see `admit`).
RESERVE_BUDGETS = LuaScript.packaged(__package__, "reserve_budgets.lua")
UNDO_ADMIT = LuaScript.packaged(__package__, "undo_admit.lua")
SETTLE_BUDGETS = LuaScript.packaged(__package__, "settle_budgets.lua")
# Local quota leases (`gateway.limits.quota`).
LEASE = LuaScript.packaged(__package__, "lease.lua")
GIVE_BACK = LuaScript.packaged(__package__, "give_back.lua")
LEASED = LuaScript.packaged(__package__, "leased.lua")
SCRIPTS = (
    ADMIT,
    SETTLE,
    RENEW,
    RESERVE_BUDGETS,
    UNDO_ADMIT,
    SETTLE_BUDGETS,
    LEASE,
    GIVE_BACK,
    LEASED,
)
# A quota lease whose holder gave nothing back this long after its end is taken to be gone
# with its replica: a request refused meanwhile stops waiting for it.
GRACE_MS = 1000.0
# How often ended leases and idle slots are given back and late token counts sent.
TICK_S = 0.05


def _log_settle_failure(subject: str, settled: asyncio.Future[Any]) -> None:
    exc = None if settled.cancelled() else settled.exception()
    if exc is not None and not isinstance(exc, RedisUnavailable):  # the breaker logs outages
        log.warning(
            "could not settle a limiter lease; it will expire by itself",
            extra={"subject": subject, "error": str(exc)},
        )


def _duration_s(value: str) -> float:
    return float(value) / 1000.0


class RedisLimiter(Limiter):
    """rpm, tpm and concurrency shared by every replica through one Redis.

    `cluster`: the client is a Redis Cluster's, so no script call may span slots. A request's
    budgets across keys (feature, total; the `{budgets}` slot) are then reserved by a second
    script after the first has taken the key's own limits and budget (the key's slot); when
    the second refuses, a third gives the first's reservation back at once. Settling likewise
    corrects each slot with its own call.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        lease_ttl_s: float = 60.0,
        window_s: float = WINDOW_S,
        prefix: str = "gw",
        wall_clock: Callable[[], float] = time.time,
        cluster: bool = False,
        quota_lease_s: float = 1.0,
    ) -> None:
        # Budget periods are UTC calendar days and months: named from this clock (injectable
        # for tests), not Redis TIME; replicas agree on a date to well under a second.
        self._wall_clock = wall_clock
        self._redis = client  # the process's shared client: closed by its owner, not here
        self._batcher = ScriptBatcher(self._redis, SCRIPTS)
        self._breaker: Breaker | None = getattr(client, "breaker", None)  # None: a test client
        self._ttl_ms = lease_ttl_s * 1000.0
        self._window_ms = window_s * 1000.0
        self._window_s = window_s
        self._prefix = prefix
        self._cluster = cluster
        # Blocks' entries may be timed up to a lease ahead, and an admission's PEXPIRE gives
        # a key KEEP_MS past now: a lease longer than that could outlive its key.
        self._lease_s = min(max(quota_lease_s, 0.0), KEEP_MS / 1000.0)
        self._quotas: dict[str, SubjectQuota] = {}
        self._ticks: Periodic | None = None
        self._renew_every_s = lease_ttl_s / 3

    def keys(self, subject: str) -> tuple[str, str, str, str]:
        """rpm log, tpm log, tpm tokens, leases: one hash tag, one Cluster slot."""
        base = f"{self._prefix}:{{{subject}}}"
        return f"{base}:rpm", f"{base}:tpm", f"{base}:tpm:n", f"{base}:leases"

    def budget_key(self, subject: str, counter: str) -> str:
        """A budget counter's key. A key's own budget shares its subject's hash tag; budgets
        across keys (feature, total) have one of their own, `{budgets}`. Standalone Redis (and
        Sentinel) run the admission over all of them in one script; on a Cluster the two
        slots get a call each (see the class)."""
        if counter.startswith("key:"):
            return f"{self._prefix}:{{{subject}}}:budget:{counter}"
        return f"{self._prefix}:{{budgets}}:{counter}"

    def quota_key(self, subject: str) -> str:
        """The quota leases out (lease id → when it ends), in the subject's slot."""
        return f"{self._prefix}:{{{subject}}}:quota"

    def recall_key(self, subject: str) -> str:
        """Set while free slots are recalled (a request was refused for concurrency)."""
        return f"{self._prefix}:{{{subject}}}:recall"

    def _marker(self, tag: str, ident: str) -> str:
        return f"{self._prefix}:{{{tag}}}:admitted:{ident}"

    @staticmethod
    def _budget_args(budgets: Sequence[BudgetCharge]) -> list[Any]:
        args: list[Any] = []
        for charge in budgets:
            lives = keep_s(charge.period)
            args += [charge.limit, 0 if lives is None else int(lives * 1000)]
        return args

    async def admit(
        self,
        subject: str,
        spec: LimitSpec,
        tokens: int,
        budgets: Sequence[BudgetCharge] = (),
        cost: int = 0,
    ) -> Admission:
        if nothing_to_ask(spec, budgets):
            return Admission(allowed=True)
        # Budgets are money, settled to the real cost: always asked of Redis, request by
        # request (a request with a budget is one script call, as before).
        if not budgets and self._lease_s > 0 and leasable(spec):
            return await self._admit_from_blocks(subject, spec, max(tokens, 0))
        return await self._admit_exact(subject, spec, tokens, budgets, cost)

    async def _admit_exact(
        self,
        subject: str,
        spec: LimitSpec,
        tokens: int,
        budgets: Sequence[BudgetCharge] = (),
        cost: int = 0,
    ) -> Admission:
        """One admission, in Redis (admit.lua)."""
        ident = secrets.token_hex(12)
        cost = max(cost, 0)
        # In the key's slot: everything on a standalone server, only the key's own budget on a
        # Cluster (the others are reserved below, in their slot).
        here = [c for c in budgets if c.scope == "key"] if self._cluster else list(budgets)
        elsewhere = [c for c in budgets if c.scope != "key"] if self._cluster else []
        wall = self._wall_clock()
        args: list[Any] = [
            spec.rpm or 0,
            spec.tpm or 0,
            spec.max_concurrent or 0,
            max(tokens, 0),
            ident,
            self._window_ms,
            self._ttl_ms,
            KEEP_MS,
            MIN_CONCURRENCY_WAIT_S * 1000.0,
            len(here),
            cost,
            *self._budget_args(here),
        ]
        keys = [
            *self.keys(subject),
            self._marker(subject, ident),
            *(self.budget_key(subject, charge.counter(wall)) for charge in here),
        ]
        try:
            reply = await self._batcher.run(ADMIT, keys, args)
        except BACKEND_ERRORS as exc:
            raise LimiterUnavailable(f"redis: {exc}") from exc
        allowed, w_requests, w_tokens, w_concurrency, too_large = reply[:5]
        requests, reserved, requests_reset, tokens_reset, budget_refused = reply[5:10]
        used = [int(value) for value in reply[10 : 10 + len(here)]]
        judged = list(here)
        refusing = here[int(budget_refused) - 1] if int(budget_refused) else None
        if int(allowed) and elsewhere:
            shared_used, refusing = await self._reserve_elsewhere(
                subject, keys, ident, elsewhere, cost, wall
            )
            judged += elsewhere
            used += shared_used
            if refusing is not None:  # refused there: what this slot took was given back
                allowed = 0
                requests = int(requests) - (1 if spec.rpm is not None else 0)
                reserved = int(reserved) - (max(tokens, 0) if spec.tpm is not None else 0)
        states = tuple(
            BudgetState(charge.scope, charge.limit, spent)
            for charge, spent in zip(judged, used, strict=True)
        )

        if int(allowed):
            admission = Admission(allowed=True)
            admission.budget_holds = tuple(
                BudgetHold(charge.scope, self.budget_key(subject, charge.counter(wall)), cost)
                for charge in budgets
            )
            if spec.tpm is not None:
                admission.reservation = ident
                admission.reserved_tokens = max(tokens, 0)
            if spec.max_concurrent is not None:
                admission.lease_id = ident
        else:
            waits = {
                name: _duration_s(raw)
                for name, raw in (
                    ("requests", w_requests),
                    ("tokens", w_tokens),
                    ("concurrency", w_concurrency),
                )
                if float(raw) >= 0
            }
            if waits or int(too_large) or refusing is None:
                admission = refused(waits, bool(int(too_large)))
            else:
                admission = budget_refusal(refusing)
        admission.budgets = states
        if spec.rpm is not None:
            admission.requests_limit = spec.rpm
            admission.requests_remaining = max(spec.rpm - int(requests), 0)
            admission.requests_reset_s = max(_duration_s(requests_reset), 0.0)
        if spec.tpm is not None:
            admission.tokens_limit = spec.tpm
            admission.tokens_remaining = max(spec.tpm - int(reserved), 0)
            admission.tokens_reset_s = max(_duration_s(tokens_reset), 0.0)
        return admission

    async def _reserve_elsewhere(
        self,
        subject: str,
        admitted_keys: list[str],
        ident: str,
        budgets: Sequence[BudgetCharge],
        cost: int,
        wall: float,
    ) -> tuple[list[int], BudgetCharge | None]:
        """Cluster: reserve `cost` in the budgets across keys, once the key's slot admitted
        the request (`admitted_keys`, with `ident`). When they refuse, or cannot be asked,
        the key's reservation is given back before this returns (refused) or raises."""
        keys = [
            self._marker("budgets", ident),
            *(self.budget_key(subject, charge.counter(wall)) for charge in budgets),
        ]
        args = [len(budgets), cost, int(self._window_ms + KEEP_MS), *self._budget_args(budgets)]
        try:
            reply = await self._batcher.run(RESERVE_BUDGETS, keys, args)
        except BACKEND_ERRORS as exc:
            # Unknown whether it ran: the key's limits are given back (its lease and entries
            # would expire anyway), the shared budgets keep what they may hold.
            self._batcher.submit(UNDO_ADMIT, admitted_keys, (ident, cost)).add_done_callback(
                functools.partial(_log_settle_failure, subject)
            )
            raise LimiterUnavailable(f"redis: {exc}") from exc
        refused_at = int(reply[0])
        used = [int(value) for value in reply[1 : 1 + len(budgets)]]
        if not refused_at:
            return used, None
        try:
            await self._batcher.run(UNDO_ADMIT, admitted_keys, (ident, cost))
        except BACKEND_ERRORS as exc:
            log.warning(
                "could not give back a refused admission; its entries will expire by themselves",
                extra={"subject": subject, "error": str(exc)},
            )
        return used, budgets[refused_at - 1]

    # --- local quota leases (gateway.limits.quota) ------------------------------------------

    def admit_now(
        self,
        subject: str,
        spec: LimitSpec,
        tokens: int,
        budgets: Sequence[BudgetCharge] = (),
        cost: int = 0,
    ) -> Admission | None:
        """From this replica's blocks, when they have room: the common admission under quota
        leases makes no Redis call, so it needs no coroutine either."""
        if budgets or self._lease_s <= 0:
            return None
        quota = self._quotas.get(subject)
        if quota is None or (quota.spec is not spec and quota.spec != spec):
            return None  # the first admission, or a changed plan: `admit` sets it up
        now = asyncio.get_running_loop().time()
        if self._link_lost():
            return None
        # `_take_from`, inline: this is every admission from a block.
        if tokens < 0:
            tokens = 0
        admission = quota.take(tokens, now, self._window_s)
        if (
            admission is not None
            and quota.asking is None
            and now >= quota.exact_until
            and not quota.quiet(now)
        ):
            self._ask_block(subject, quota, tokens, now)
        return admission

    def _take_from(
        self, subject: str, quota: SubjectQuota, tokens: int, now: float
    ) -> Admission | None:
        """An admission from `quota`'s blocks (asking for the next block ahead when it is
        time), or None when they have no room."""
        admission = quota.take(tokens, now, self._window_s)
        if (
            admission is not None
            and quota.asking is None
            and now >= quota.exact_until
            and not quota.quiet(now)
        ):
            self._ask_block(subject, quota, tokens, now)
        return admission

    async def _admit_from_blocks(self, subject: str, spec: LimitSpec, tokens: int) -> Admission:
        """From this replica's blocks when they have room (no I/O), asking for the next block
        before they run out; request by request near the limit."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._link_lost():
            self._forget_blocks()
        quota = self._quotas.get(subject)
        if quota is None or quota.spec != spec:
            if quota is not None:  # the plan changed: the old blocks go back
                self._give_up(subject, quota)
                quota.held_slots.clear()  # slots still in use are released as they settle
            quota = self._quotas[subject] = SubjectQuota(spec)
            self._start_ticks()
        admission = self._take_from(subject, quota, tokens, now)
        if admission is not None:
            return admission
        if now >= quota.exact_until:
            # No room here (the first request, or one that outran the block asked ahead):
            # wait for the block rather than make a call of its own.
            # Several requests may wait on one block that holds too little for all of them:
            # those left over ask for the next, up to a few times.
            for _ in range(3):
                asking = quota.asking or self._ask_block(subject, quota, tokens, now)
                if asking is None:
                    break
                quota.waiting += 1
                try:
                    with contextlib.suppress(Exception):  # Redis down: the exact call says so
                        await asyncio.shield(asking)
                    if quota.asking is asking:
                        # Answered, but the callback that installs the block has not run yet
                        # (it is next in the loop's queue).
                        await asyncio.sleep(0)
                finally:
                    quota.waiting -= 1
                now = loop.time()
                admission = quota.take(tokens, now, self._window_s)
                if admission is not None:
                    return admission
                if asking.cancelled() or asking.exception() is not None:
                    break
                if now < quota.exact_until or self._quotas.get(subject) is not quota:
                    break
        return await self._admit_waiting_for_leases(subject, spec, tokens)

    async def _admit_waiting_for_leases(
        self, subject: str, spec: LimitSpec, tokens: int
    ) -> Admission:
        """admit.lua; when it refuses for want of requests or tokens while a quota lease is
        out (this replica's or another's), the room it did not use comes back when it ends:
        wait for that and ask again, rather than refuse a request the limit has room for."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self._lease_s + GRACE_MS / 1000.0 + 0.5
        while True:
            admission = await self._admit_exact(subject, spec, tokens)
            if admission.limit == "concurrency":
                # Free slots another replica holds come back with its next block call
                # (within half a lease while it is busy) or when they idle a lease; the
                # refusal's retry-after (1 s) covers it.
                self._batcher.submit(
                    LEASED,
                    (self.quota_key(subject), self.recall_key(subject)),
                    (GRACE_MS, self._lease_s * 1000.0),
                    linger=True,
                ).add_done_callback(functools.partial(_log_settle_failure, subject))
                return admission
            if (
                admission.allowed
                or admission.limit not in ("requests", "tokens")
                or admission.extra.get("too_large")
                or loop.time() >= give_up_at
            ):
                return admission
            try:
                wait_ms = float(
                    await self._batcher.run(
                        LEASED,
                        (self.quota_key(subject), self.recall_key(subject)),
                        (GRACE_MS, 0),
                    )
                )
            except BACKEND_ERRORS:
                return admission
            if wait_ms < 0:
                return admission
            await asyncio.sleep(min(wait_ms / 1000.0 + TICK_S, 0.25))

    def _link_lost(self) -> bool:
        """Redis unreachable (the breaker is open) or gone (a kept connection was closed by
        the server): blocks taken before are not used, so that `on_backend_error` decides
        as soon as it would without them."""
        breaker = self._breaker
        return (breaker is not None and breaker.open) or self._batcher.link_lost()

    def _forget_blocks(self) -> None:
        """Without Redis: what the blocks hold stays counted there until it leaves the window
        (or its slots' TTL): never more admitted, at worst less."""
        self._quotas.clear()

    def _ask_block(
        self, subject: str, quota: SubjectQuota, tokens: int, now: float
    ) -> asyncio.Future[Any] | None:
        """Ask for the next block when what is left here runs low (half a block, or half a
        lease of time), or slots when few are free. None when nothing is needed."""
        spec = quota.spec
        lease_s = self._lease_s
        need_lease = False
        average = max(quota.avg_tokens or tokens, 1.0)
        # As many admissions as come in a quarter lease at the rate since the last call
        # (at least BLOCK_REQUESTS); Redis makes it smaller near the limit.
        rate = quota.takes / max(now - quota.asked_at, 0.001) if quota.asked_at else 0.0
        want_requests = max(
            blocks.BLOCK_REQUESTS,
            math.ceil(rate * lease_s * blocks.BLOCK_SHARE),
            2 * quota.waiting,
        )
        want_tokens = least_tokens = 0
        if spec.rpm is not None or spec.tpm is not None:
            requests, spare_tokens, ends = quota.room(now)
            want_tokens = math.ceil(want_requests * average) if spec.tpm else 0
            # Half of the last block left, or half a lease of time: the next block is asked
            # for now, so that it is there before this one runs out.
            need_lease = (
                ends - now < lease_s / 2
                or (spec.rpm is not None and requests <= quota.block_requests // 2)
                or (spec.tpm is not None and spare_tokens <= quota.block_tokens // 2)
            )
            if need_lease and spec.tpm is not None:
                least_tokens = max(math.ceil(blocks.LEAST_REQUESTS * average), tokens)
                if spec.tpm // blocks.DIVISOR < least_tokens:
                    # Requests this size make blocks too large a share of the tpm.
                    quota.exact_until = now + lease_s
                    return None
        busy = quota.busy_slots
        want_slots = spec.max_concurrent is not None and len(quota.free_slots) < max(
            blocks.LEAST_SLOTS, busy // 4
        )
        # Slots are asked for when few are free, and the call made at least every half lease
        # while they are in use: its answer says when free slots are recalled.
        need_slots = want_slots or (
            spec.max_concurrent is not None and now - quota.asked_at >= lease_s / 2
        )
        if not (need_lease or need_slots):
            # Until one of these can change, the next admissions need not look again.
            until = quota.asked_at + lease_s / 2 if spec.max_concurrent is not None else math.inf
            if spec.rpm is not None or spec.tpm is not None:
                until = min(until, ends - lease_s / 2, quota.first_end(now))
                quota.keep_quiet(until, requests, spare_tokens)
            else:
                quota.keep_quiet(until, 0, 0)
            return None
        quota.asked_at = now
        quota.takes = 0
        ident = secrets.token_hex(8)
        args: list[Any] = [
            spec.rpm or 0,
            spec.tpm or 0,
            spec.max_concurrent or 0,
            want_requests if need_lease and spec.rpm is not None else 0,
            want_tokens if need_lease else 0,
            max(blocks.BLOCK_SLOTS, busy // 2, 2 * quota.waiting) if want_slots else 0,
            blocks.LEAST_REQUESTS,
            least_tokens,
            blocks.LEAST_SLOTS,
            ident,
            lease_s * 1000.0,
            self._window_ms,
            KEEP_MS,
            self._ttl_ms,
            blocks.SPLIT,
            blocks.DIVISOR,
        ]
        keys = (*self.keys(subject), self.quota_key(subject), self.recall_key(subject))
        asking = self._batcher.submit(LEASE, keys, args)
        quota.asking = asking
        # Its end is reckoned from before the call went out: never later than Redis's.
        asking.add_done_callback(
            functools.partial(self._granted, subject, quota, ident, now + lease_s)
        )
        return asking

    def _granted(
        self,
        subject: str,
        quota: SubjectQuota,
        ident: str,
        ends: float,
        asked: asyncio.Future[Any],
    ) -> None:
        quota.asking = None
        if asked.cancelled() or asked.exception() is not None:
            return  # the breaker logs an outage; the next admission asks again
        granted, requests, tokens, slots, counted, reserved, _held, recalled = (
            int(value) for value in asked.result()
        )
        quota.requests_seen, quota.tokens_seen = counted, reserved
        lease = QuotaLease(ident, ends, requests, tokens)
        new_slots = [f"{ident}#c{i}" for i in range(1, slots + 1)]
        if self._quotas.get(subject) is not quota:  # given up meanwhile: back at once
            self._give_back(subject, lease, over=True, slots=new_slots)
            return
        now = asyncio.get_running_loop().time()
        if not granted:
            # Near the limit: what is held here goes back, and admission goes request by
            # request for a lease's time.
            quota.exact_until = now + self._lease_s
            self._give_up(subject, quota)
            return
        if requests or tokens:
            quota.add(lease)
        if new_slots:
            quota.free_slots[:0] = new_slots  # below the ones in use: those stay warm
            quota.held_slots.update(new_slots)
            quota.slots_used_at = quota.slots_renewed_at = now
        if recalled and quota.free_slots:
            quota.held_slots.difference_update(quota.free_slots)
            self._give_back(subject, None, over=False, slots=quota.free_slots)
            quota.free_slots = []

    def _give_back(
        self,
        subject: str,
        lease: QuotaLease | None,
        *,
        over: bool,
        slots: Sequence[str] = (),
        tokens: int = 0,
    ) -> None:
        """Unused requests and tokens of `lease` (or only `tokens` to add to an ended lease's
        entry), and `slots`, back to Redis with the next call."""
        rpm_key, _, tokens_key, leases_key = self.keys(subject)
        if lease is not None:
            ident, first, last = lease.ident, lease.used_requests + 1, lease.requests
            tokens += lease.used_tokens - lease.tokens if lease.tokens else 0
        else:
            ident, first, last = "", 1, 0
        if first > last and not tokens and not over and not slots:
            return
        self._batcher.submit(
            GIVE_BACK,
            (rpm_key, tokens_key, leases_key, self.quota_key(subject)),
            (ident, first, last, tokens, 1 if over else 0, *slots),
            linger=True,
        ).add_done_callback(functools.partial(_log_settle_failure, subject))

    def _give_up(self, subject: str, quota: SubjectQuota) -> None:
        """Every lease and free slot of `quota` back now."""
        for lease in list(quota.leases):
            self._give_back(subject, lease, over=True)
            quota.end(lease)
        if quota.free_slots:
            quota.held_slots.difference_update(quota.free_slots)
            self._give_back(subject, None, over=False, slots=quota.free_slots)
            quota.free_slots = []

    def _start_ticks(self) -> None:
        if self._ticks is None:
            self._ticks = Periodic("quota-leases", TICK_S, self._tick)
            self._ticks.start()

    async def _tick(self) -> None:
        """Ended leases and idle slots back, late token counts sent, slots renewed."""
        now = asyncio.get_running_loop().time()
        renewals: list[tuple[str, SubjectQuota, list[str]]] = []
        for subject, quota in list(self._quotas.items()):
            ended = [lease for lease in quota.leases if lease.ends <= now]
            for lease in ended:
                quota.end(lease)
                self._give_back(subject, lease, over=True)
            for ident, tokens in quota.corrections.items():
                self._give_back(subject, QuotaLease(ident, 0.0, 0, 0), over=False, tokens=tokens)
            quota.corrections.clear()
            free = quota.free_slots
            # Free slots beyond the most in use at once over the last lease or so (at least a
            # block) go back, all of them once idle for a lease.
            if now - quota.peak_since >= self._lease_s:
                quota.peak_since, quota.busy_peak = now, quota.busy_slots
            spare = len(free) - max(blocks.BLOCK_SLOTS, quota.busy_peak)
            if free and now - quota.slots_used_at >= self._lease_s:
                spare = len(free)  # idle: every free slot goes back
            if spare > 0:
                # The bottom of the stack: the slots least recently used.
                quota.released_slots += free[:spare]
                quota.held_slots.difference_update(free[:spare])
                del free[:spare]
            if quota.released_slots:
                self._give_back(subject, None, over=False, slots=quota.released_slots)
                quota.released_slots = []
            if quota.held_slots and now - quota.slots_renewed_at >= self._renew_every_s:
                quota.slots_renewed_at = now
                renewals.append((subject, quota, sorted(quota.held_slots)))
            if quota.idle and now >= quota.exact_until:
                del self._quotas[subject]
        if renewals:
            await self._renew_slots(renewals)

    async def _renew_slots(self, renewals: list[tuple[str, SubjectQuota, list[str]]]) -> None:
        """Slots live on while this replica holds them. When Redis no longer has them all
        (they expired while it was away), none of them is used again."""
        calls = [
            ScriptCall(RENEW, (self.keys(subject)[3],), (self._ttl_ms, KEEP_MS, *ids))
            for subject, _, ids in renewals
        ]
        try:
            results = await self._batcher.pipelined(calls)
        except Exception:  # the breaker logs an outage; the slots expire meanwhile
            results = [None] * len(calls)
        for (_, quota, ids), renewed in zip(renewals, results, strict=True):
            if isinstance(renewed, int) and renewed >= len(ids):
                continue
            quota.held_slots.difference_update(ids)
            lost = set(ids)
            quota.released_slots += [slot for slot in quota.free_slots if slot in lost]
            quota.free_slots = [slot for slot in quota.free_slots if slot not in lost]

    async def settle(
        self,
        subject: str,
        admission: Admission,
        actual_tokens: int | None,
        actual_cost: int | None = None,
    ) -> None:
        settled = self._submit_settle(subject, admission, actual_tokens, actual_cost, False)
        if settled:
            with contextlib.suppress(Exception):  # logged by the callback
                await asyncio.gather(*settled)

    def settle_nowait(
        self,
        subject: str,
        admission: Admission,
        actual_tokens: int | None,
        actual_cost: int | None = None,
    ) -> None:
        """Queued on the batcher: the request's end awaits nothing, and no task is made for
        it; it travels with the next script call (within 2 ms). A failure is logged; the lease
        and reservation then expire by themselves (a budget reservation is then kept as
        reserved: never less than what was spent)."""
        lease_id, reservation = admission.lease_id, admission.reservation
        if (lease_id is not None and lease_id.startswith(LOCAL)) or (
            reservation is not None and reservation.startswith(LOCAL)
        ):
            # Admitted from a block: settled in memory (the common case, so asked first).
            self._settle_local(subject, admission, actual_tokens)
            return
        self._submit_settle(subject, admission, actual_tokens, actual_cost, True)

    def _submit_settle(
        self,
        subject: str,
        admission: Admission,
        actual_tokens: int | None,
        actual_cost: int | None,
        linger: bool,
    ) -> list[asyncio.Future[Any]]:
        if (admission.lease_id or "").startswith(LOCAL) or (admission.reservation or "").startswith(
            LOCAL
        ):
            self._settle_local(subject, admission, actual_tokens)
            return []
        correct = actual_tokens is not None and admission.reservation is not None
        holds = admission.budget_holds if actual_cost is not None else ()
        if admission.lease_id is None and not correct and not holds:
            return []
        # On a Cluster, the holds across keys are corrected by a call in their own slot.
        elsewhere = [h for h in holds if h.scope != "key"] if self._cluster else []
        here = [h for h in holds if h not in elsewhere] if elsewhere else holds
        real = max(actual_cost or 0, 0)
        _, _, tokens_key, leases_key = self.keys(subject)
        keys = [leases_key, tokens_key, *(hold.counter for hold in here)]
        args: list[Any] = [
            admission.lease_id or "",
            admission.reservation or "",
            "" if actual_tokens is None else max(actual_tokens, 0),
            *(real - hold.reserved for hold in here),
        ]
        calls = [self._batcher.submit(SETTLE, keys, args, linger=linger)]
        if elsewhere:
            calls.append(
                self._batcher.submit(
                    SETTLE_BUDGETS,
                    [hold.counter for hold in elsewhere],
                    [real - hold.reserved for hold in elsewhere],
                    linger=linger,
                )
            )
        for settled in calls:
            settled.add_done_callback(functools.partial(_log_settle_failure, subject))
        return calls

    def _settle_local(self, subject: str, admission: Admission, actual_tokens: int | None) -> None:
        """An admission made from a block: settled here, in memory; Redis hears of it with
        the next block's call or tick (slots given back, token counts corrected)."""
        quota = self._quotas.get(subject)
        if quota is not None:
            quota.settle(admission, actual_tokens)
            return
        # Its blocks are gone (Redis was lost, or the subject idled out): straight to Redis.
        orphan = SubjectQuota(LimitSpec())
        orphan.settle(admission, actual_tokens)
        for ident, tokens in orphan.corrections.items():
            self._give_back(subject, QuotaLease(ident, 0.0, 0, 0), over=False, tokens=tokens)
        if orphan.released_slots:
            self._give_back(subject, None, over=False, slots=orphan.released_slots)

    async def renew(self, leases: list[tuple[str, str]]) -> None:
        by_subject: dict[str, list[str]] = {}
        for subject, lease_id in leases:
            if not lease_id.startswith(LOCAL):  # a block's slot: renewed with its block
                by_subject.setdefault(subject, []).append(lease_id)
        if not by_subject:
            return
        # One script call per subject (a subject's keys share a Cluster slot; different
        # subjects may not), all in one pipeline: one round trip.
        calls = [
            ScriptCall(RENEW, (self.keys(subject)[3],), (self._ttl_ms, KEEP_MS, *ids))
            for subject, ids in by_subject.items()
        ]
        try:
            results = await self._batcher.pipelined(calls)
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                raise failed[0]
        except RedisUnavailable:
            pass  # the breaker logs the outage; the leases renew once Redis is back
        except Exception as exc:  # never raises: an unrenewed lease only expires early
            log.warning(
                "could not renew limiter leases; they may expire",
                extra={"leases": len(leases), "error": str(exc)},
            )

    async def budget_used(self, budgets: Sequence[tuple[str, BudgetCharge]]) -> list[int]:
        if not budgets:
            return []
        wall = self._wall_clock()
        keys = [self.budget_key(subject, charge.counter(wall)) for subject, charge in budgets]
        try:
            # One key at a time in a pipeline, not MGET: the keys may lie in different slots.
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                values = await pipe.execute()
        except BACKEND_ERRORS as exc:
            raise LimiterUnavailable(f"redis: {exc}") from exc
        return [int(value) if value is not None else 0 for value in values]

    async def in_flight(self, subject: str) -> int:
        try:
            return int(await IN_FLIGHT.run(self._redis, (self.keys(subject)[3],), ()))
        except BACKEND_ERRORS as exc:
            raise LimiterUnavailable(f"redis: {exc}") from exc

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except BACKEND_ERRORS as exc:
            raise LimiterUnavailable(f"redis: {exc}") from exc

    async def aclose(self) -> None:
        """Every block goes back before the connections close: a replica that stops leaves
        no quota behind."""
        if self._ticks is not None:
            await self._ticks.stop()
            self._ticks = None
        for subject, quota in self._quotas.items():
            self._give_up(subject, quota)
            for ident, tokens in quota.corrections.items():
                self._give_back(subject, QuotaLease(ident, 0.0, 0, 0), over=False, tokens=tokens)
            held = [*quota.released_slots, *quota.held_slots]
            if held:
                self._give_back(subject, None, over=False, slots=held)
        self._quotas.clear()
        await self._batcher.wait_idle()
        await self._batcher.aclose()
