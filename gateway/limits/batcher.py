"""Script calls that share round trips under load (the Redis limiter's admissions and settles).

A call made when nothing waits goes out at once, alone. Calls made while one is out queue,
and go together in one pipeline (one pipeline in flight at a time; what queues meanwhile goes
in the next). So nothing waits at low load, and under load one round trip, and one pass through
redis-py's machinery (which costs more CPU per call than the rest of a request), carries many
calls. Each call is still its own atomic script run: batching changes no result, only how calls
travel. With a Cluster, redis-py splits each pipeline per master, one round trip to each.

A call that nobody waits for (a request's settle) may *linger*: it is not sent on its own but
with the next call, or after `LINGER_S` when none comes. One request after another (c=1) then
costs one round trip each, the settle of the last riding with the admission of the next,
instead of two. A lingering settle goes before the calls queued after it, so this replica's
next admission always sees the lease given back.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError

from gateway.store.breaker import RedisClient
from gateway.store.lane import ScriptLane
from gateway.store.scripts import LuaScript, ScriptCall, pipeline_calls, run_pipelined

# How long a call that nobody waits for may wait for company (a lease is given back that much
# later at most, when the gateway is idle).
LINGER_S = 0.002


class ScriptBatcher:
    """Sends script calls alone when nothing waits, else together in the next pipeline."""

    def __init__(
        self, client: RedisClient, scripts: Sequence[LuaScript] = (), max_batch: int = 128
    ) -> None:
        """`scripts`: every script the calls use. They are loaded together before the first
        call and after any NOSCRIPT, so that a pipeline never meets one it lacks while calls
        after it run: a call sent again after loading would otherwise run after them (a
        request's settle after the next admission)."""
        self._client = client
        # Standalone and Sentinel: the direct calls and the pipelines each go on a connection
        # of their own, without redis-py's per-command machinery (see `gateway.store.lane`).
        self._direct_lane = ScriptLane.for_client(client)
        self._pipeline_lane = ScriptLane.for_client(client)
        self._lanes = tuple(
            lane for lane in (self._direct_lane, self._pipeline_lane) if lane is not None
        )
        self._scripts = tuple(scripts)
        self._loaded = not self._scripts
        self._max_batch = max_batch
        self._queue: list[_Queued] = []
        self._sender: asyncio.Task[None] | None = None
        self._direct = False  # a call is out on its own, sent by its caller
        self._linger: asyncio.TimerHandle | None = None  # sends lingering calls when due

    async def run(self, script: LuaScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if self._direct or self._queue:
            return await self.submit(script, keys, args)
        # No call is out on its own and none waits: the caller sends its call itself, with no
        # task and no pipeline (the common case at low load; a pipeline still out, such as the
        # last request's settle, is not waited for). Calls made meanwhile queue, and go
        # together after it.
        self._direct = True
        try:
            if not self._loaded:
                await self._load_all()
            try:
                return await self._call(ScriptCall(script, keys, args))
            except NoScriptError:  # Redis restarted or was flushed
                await self._load_all({script})
                return await self._call(ScriptCall(script, keys, args))
        finally:
            self._direct = False
            self._start_sender()

    def submit(
        self,
        script: LuaScript,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        linger: bool = False,
    ) -> asyncio.Future[Any]:
        """Queue a call; its answer (or error) arrives on the returned future. `linger`: it
        may wait up to `LINGER_S` for another call to travel with."""
        loop = asyncio.get_running_loop()
        queued = _Queued(ScriptCall(script, keys, args), loop.create_future())
        self._queue.append(queued)
        if linger:
            if self._linger is None and self._sender is None and not self._direct:
                self._linger = loop.call_later(LINGER_S, self._start_sender)
        elif not self._direct:
            self._start_sender()
        return queued.result

    def _start_sender(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
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
        if self._linger is not None:
            self._start_sender()
        while self._sender is not None or self._direct:
            if self._sender is not None:
                await asyncio.shield(self._sender)
            else:
                await asyncio.sleep(0.001)

    async def _call(self, call: ScriptCall) -> Any:
        if self._direct_lane is None:
            return await self._client.evalsha(
                call.script.sha, len(call.keys), *call.keys, *call.args
            )
        (reply,) = await self._direct_lane.send((call,))
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def pipelined(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """`calls` in one pipeline, now, through the client (so that it may run beside the
        batcher's own): each one's result or error, in order. Raises only when Redis could
        not be asked at all."""
        if not self._loaded:
            await self._load_all()
        send = functools.partial(pipeline_calls, self._client)
        return await run_pipelined(self._client, calls, send, self._load_all)

    async def _deliver(self, calls: Sequence[ScriptCall]) -> list[Any]:
        if not self._loaded:
            await self._load_all()
        return await run_pipelined(self._client, calls, self._pipeline, self._load_all)

    async def _load_all(self, lost: set[LuaScript] | None = None) -> None:
        """Every script, and those found lost (SCRIPT LOAD goes to every master of a
        Cluster)."""
        self._loaded = False
        for script in {*self._scripts, *(lost or ())}:
            await script.load(self._client)
        self._loaded = True

    async def _send(self, batch: list[_Queued]) -> None:
        try:
            results = await self._deliver([queued.call for queued in batch])
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
        if self._pipeline_lane is not None:
            return await self._pipeline_lane.send(calls)
        return await pipeline_calls(self._client, calls)

    def link_lost(self) -> bool:
        """A lane's kept connection was closed by the server (killed, restarted, failed over):
        seen at once, before anything is sent on it."""
        # A loop rather than `any` over a generator: this is asked on every admission from
        # blocks.
        for lane in self._lanes:
            reader = lane.reader
            if reader is not None and reader.at_eof():
                return True
        return False

    async def aclose(self) -> None:
        """After `wait_idle`: the lanes' connections go back to the pool."""
        for lane in (self._direct_lane, self._pipeline_lane):
            if lane is not None:
                await lane.aclose()


@dataclass(slots=True)
class _Queued:
    call: ScriptCall
    result: asyncio.Future[Any]
