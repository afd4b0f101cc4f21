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
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import RedisError

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
from gateway.store.breaker import RedisClient, RedisUnavailable
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
SCRIPTS = (ADMIT, SETTLE, RENEW, RESERVE_BUDGETS, UNDO_ADMIT, SETTLE_BUDGETS)


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
    ) -> None:
        # Budget periods are UTC calendar days and months: named from this clock (injectable
        # for tests), not Redis TIME; replicas agree on a date to well under a second.
        self._wall_clock = wall_clock
        self._redis = client  # the process's shared client: closed by its owner, not here
        self._batcher = ScriptBatcher(self._redis, SCRIPTS)
        self._ttl_ms = lease_ttl_s * 1000.0
        self._window_ms = window_s * 1000.0
        self._prefix = prefix
        self._cluster = cluster

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
        self._submit_settle(subject, admission, actual_tokens, actual_cost, True)

    def _submit_settle(
        self,
        subject: str,
        admission: Admission,
        actual_tokens: int | None,
        actual_cost: int | None,
        linger: bool,
    ) -> list[asyncio.Future[Any]]:
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

    async def renew(self, leases: list[tuple[str, str]]) -> None:
        by_subject: dict[str, list[str]] = {}
        for subject, lease_id in leases:
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
        await self._batcher.wait_idle()
        await self._batcher.aclose()
