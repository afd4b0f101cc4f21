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
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from gateway.limits.base import (
    WINDOW_S,
    Admission,
    Limiter,
    LimiterUnavailable,
    LimitSpec,
    nothing_to_ask,
)
from gateway.limits.budgets import BudgetCharge, BudgetHold, BudgetState, keep_s
from gateway.limits.memory import MIN_CONCURRENCY_WAIT_S, budget_refusal, refused
from gateway.store.breaker import RedisUnavailable

log = logging.getLogger("gateway.limits.redis")

# Keys outlive their newest entry by this much, so that a key never vanishes under an entry
# that still counts (clock granularity, scripts run back to back).
KEEP_MS = 1000.0
# Errors that mean "Redis cannot be asked now". OSError covers socket errors and timeouts that
# escape redis-py's own classes.
BACKEND_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)


class LuaScript:
    """A Lua script run by EVALSHA, loaded again whenever Redis has lost it (NOSCRIPT)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    @classmethod
    def packaged(cls, name: str) -> LuaScript:
        """A script shipped beside this module as package data."""
        return cls(resources.files("gateway.limits").joinpath(name).read_text(encoding="utf-8"))

    async def run(self, client: Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load(client)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    async def load(self, client: Redis) -> None:
        sha = await client.script_load(self.source)
        if sha != self.sha:  # pragma: no cover - would be a bug in Redis or here
            raise RedisError(f"SCRIPT LOAD returned {sha}, expected {self.sha}")


class ScriptBatcher:
    """Script calls that share round trips under load. A call made when nothing waits goes out
    at once, alone. Calls made while one is out queue, and go together in one pipeline (one
    pipeline in flight at a time; what queues meanwhile goes in the next). So nothing waits at
    low load, and under load one round trip, and one pass through redis-py's machinery (which
    costs more CPU per call than the rest of a request), carries many calls. Each call is still
    its own atomic script run: batching changes no result, only how calls travel."""

    def __init__(self, client: Redis, max_batch: int = 128) -> None:
        self._client = client
        self._max_batch = max_batch
        self._queue: list[_Queued] = []
        self._sender: asyncio.Task[None] | None = None
        self._direct = False  # a call is out on its own, sent by its caller

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if self._direct or self._queue:
            return await self.submit(script, keys, args)
        # No call is out on its own and none waits: the caller sends its call itself, with no
        # task and no pipeline (the common case at low load; a pipeline still out, such as the
        # last request's settle, is not waited for). Calls made meanwhile queue, and go
        # together after it.
        self._direct = True
        try:
            return await script.run(self._client, keys, args)
        finally:
            self._direct = False
            self._start_sender()

    def submit(
        self, script: LuaScript, keys: Sequence[str], args: Sequence[Any]
    ) -> asyncio.Future[Any]:
        """Queue a call; its answer (or error) arrives on the returned future."""
        queued = _Queued(ScriptCall(script, keys, args), asyncio.get_running_loop().create_future())
        self._queue.append(queued)
        if not self._direct:
            self._start_sender()
        return queued.result

    def _start_sender(self) -> None:
        if self._queue and self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._send(batch)
        finally:
            self._sender = None

    async def wait_idle(self) -> None:
        """Until every call made so far has its answer (before the client closes)."""
        while self._sender is not None or self._direct:
            if self._sender is not None:
                await asyncio.shield(self._sender)
            else:
                await asyncio.sleep(0.001)

    async def pipelined(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """`calls` in one pipeline, now: each one's result or error, in order. Raises only
        when Redis could not be asked at all."""
        results = await self._pipeline(calls)
        lost = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if lost:
            # Redis restarted or was flushed: load what it lost, then run again only the
            # calls it refused (the others have run).
            for script in {calls[i].script for i in lost}:
                await script.load(self._client)
            again = await self._pipeline([calls[i] for i in lost])
            for i, result in zip(lost, again, strict=True):
                results[i] = result
        return results

    async def _send(self, batch: list[_Queued]) -> None:
        try:
            results = await self.pipelined([queued.call for queued in batch])
        except BaseException as exc:
            for call in batch:
                if call.result.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    call.result.cancel()
                else:
                    call.result.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for call, result in zip(batch, results, strict=True):
            if call.result.done():  # its caller gave up (cancelled)
                continue
            if isinstance(result, Exception):
                call.result.set_exception(result)
            else:
                call.result.set_result(result)

    async def _pipeline(self, calls: Sequence[ScriptCall]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            return list(await pipe.execute(raise_on_error=False))


@dataclass(slots=True)
class ScriptCall:
    script: LuaScript
    keys: Sequence[str]
    args: Sequence[Any]


@dataclass(slots=True)
class _Queued:
    call: ScriptCall
    result: asyncio.Future[Any]


ADMIT = LuaScript.packaged("admit.lua")
SETTLE = LuaScript.packaged("settle.lua")
RENEW = LuaScript.packaged("renew.lua")
IN_FLIGHT = LuaScript.packaged("in_flight.lua")


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
    """rpm, tpm and concurrency shared by every replica through one Redis."""

    def __init__(
        self,
        client: Redis,
        *,
        lease_ttl_s: float = 60.0,
        window_s: float = WINDOW_S,
        prefix: str = "gw",
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        # Budget periods are UTC calendar days and months: named from this clock (injectable
        # for tests), not Redis TIME; replicas agree on a date to well under a second.
        self._wall_clock = wall_clock
        self._redis = client  # the process's shared client: closed by its owner, not here
        self._batcher = ScriptBatcher(self._redis)
        self._ttl_ms = lease_ttl_s * 1000.0
        self._window_ms = window_s * 1000.0
        self._prefix = prefix

    def keys(self, subject: str) -> tuple[str, str, str, str]:
        """rpm log, tpm log, tpm tokens, leases: one hash tag, one Cluster slot."""
        base = f"{self._prefix}:{{{subject}}}"
        return f"{base}:rpm", f"{base}:tpm", f"{base}:tpm:n", f"{base}:leases"

    def budget_key(self, subject: str, counter: str) -> str:
        """A budget counter's key. A key's own budget shares its subject's hash tag; budgets
        across keys (feature, total) have one of their own. Standalone Redis (and Sentinel)
        run the admission over all of them in one script; Redis Cluster would refuse the
        cross-slot call (Cluster is not supported by this build)."""
        if counter.startswith("key:"):
            return f"{self._prefix}:{{{subject}}}:budget:{counter}"
        return f"{self._prefix}:{{budgets}}:{counter}"

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
        wall = self._wall_clock()
        counters = [charge.counter(wall) for charge in budgets]
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
            len(budgets),
            max(cost, 0),
        ]
        for charge in budgets:
            lives = keep_s(charge.period)
            args += [charge.limit, 0 if lives is None else int(lives * 1000)]
        keys = [
            *self.keys(subject),
            f"{self._prefix}:{{{subject}}}:admitted:{ident}",
            *(self.budget_key(subject, counter) for counter in counters),
        ]
        try:
            reply = await self._batcher.run(ADMIT, keys, args)
        except BACKEND_ERRORS as exc:
            raise LimiterUnavailable(f"redis: {exc}") from exc
        allowed, w_requests, w_tokens, w_concurrency, too_large = reply[:5]
        requests, reserved, requests_reset, tokens_reset, budget_refused = reply[5:10]
        used = [int(value) for value in reply[10 : 10 + len(budgets)]]
        states = tuple(
            BudgetState(charge.scope, charge.limit, spent)
            for charge, spent in zip(budgets, used, strict=True)
        )

        if int(allowed):
            admission = Admission(allowed=True)
            admission.budget_holds = tuple(
                BudgetHold(charge.scope, self.budget_key(subject, counter), max(cost, 0))
                for charge, counter in zip(budgets, counters, strict=True)
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
            if waits or int(too_large):
                admission = refused(waits, bool(int(too_large)))
            else:
                admission = budget_refusal(budgets[int(budget_refused) - 1])
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

    async def settle(
        self,
        subject: str,
        admission: Admission,
        actual_tokens: int | None,
        actual_cost: int | None = None,
    ) -> None:
        settled = self._submit_settle(subject, admission, actual_tokens, actual_cost)
        if settled is not None:
            with contextlib.suppress(Exception):  # logged by the callback
                await settled

    def settle_nowait(
        self,
        subject: str,
        admission: Admission,
        actual_tokens: int | None,
        actual_cost: int | None = None,
    ) -> None:
        """Queued on the batcher: the request's end awaits nothing, and no task is made for
        it. A failure is logged; the lease and reservation then expire by themselves (a
        budget reservation is then kept as reserved: never less than what was spent)."""
        self._submit_settle(subject, admission, actual_tokens, actual_cost)

    def _submit_settle(
        self,
        subject: str,
        admission: Admission,
        actual_tokens: int | None,
        actual_cost: int | None,
    ) -> asyncio.Future[Any] | None:
        correct = actual_tokens is not None and admission.reservation is not None
        holds = admission.budget_holds if actual_cost is not None else ()
        if admission.lease_id is None and not correct and not holds:
            return None
        _, _, tokens_key, leases_key = self.keys(subject)
        keys = [leases_key, tokens_key, *(hold.counter for hold in holds)]
        args: list[Any] = [
            admission.lease_id or "",
            admission.reservation or "",
            "" if actual_tokens is None else max(actual_tokens, 0),
            *(max(actual_cost or 0, 0) - hold.reserved for hold in holds),
        ]
        settled = self._batcher.submit(SETTLE, keys, args)
        settled.add_done_callback(functools.partial(_log_settle_failure, subject))
        return settled

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
