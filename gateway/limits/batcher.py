"""Script calls that share round trips under load (the Redis limiter's admissions and settles).

A call made when nothing waits goes out at once, alone. Calls made while one is out queue,
and go together in one pipeline (one pipeline in flight at a time; what queues meanwhile goes
in the next). So nothing waits at low load, and under load one round trip, and one pass through
redis-py's machinery (which costs more CPU per call than the rest of a request), carries many
calls. Each call is still its own atomic script run: batching changes no result, only how calls
travel. With a Cluster, redis-py splits each pipeline per master, one round trip to each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.store.breaker import RedisClient
from gateway.store.scripts import LuaScript, ScriptCall, pipeline_calls, run_pipelined


class ScriptBatcher:
    """Sends script calls alone when nothing waits, else together in the next pipeline."""

    def __init__(self, client: RedisClient, max_batch: int = 128) -> None:
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
        return await run_pipelined(self._client, calls, self._pipeline)

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
        return await pipeline_calls(self._client, calls)


@dataclass(slots=True)
class _Queued:
    call: ScriptCall
    result: asyncio.Future[Any]
