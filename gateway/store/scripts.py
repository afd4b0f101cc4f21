"""Lua scripts on the shared client: run by EVALSHA, loaded again wherever Redis lost them.

Every script call names its keys, and they share one hash tag, so it runs on one Cluster slot.
A script is loaded on first NOSCRIPT rather than at start: a standalone Redis that restarted
or was flushed has lost its scripts, and on a Cluster each master learns them separately (a
master added later, or a replica promoted, has never seen them). `SCRIPT LOAD` through the
Cluster client goes to every master, so one load serves the whole cluster.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError, RedisError

from gateway.store.breaker import RedisClient


class LuaScript:
    """A Lua script run by EVALSHA, loaded again whenever Redis has lost it (NOSCRIPT)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    @classmethod
    def packaged(cls, package: str, name: str) -> LuaScript:
        """A script shipped as package data of `package`."""
        return cls(resources.files(package).joinpath(name).read_text(encoding="utf-8"))

    async def run(self, client: RedisClient, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load(client)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    async def load(self, client: RedisClient) -> None:
        sha = await client.script_load(self.source)
        if sha != self.sha:  # pragma: no cover - would be a bug in Redis or here
            raise RedisError(f"SCRIPT LOAD returned {sha}, expected {self.sha}")


@dataclass(slots=True)
class ScriptCall:
    script: LuaScript
    keys: Sequence[str]
    args: Sequence[Any]


Send = Callable[[Sequence[ScriptCall]], Awaitable[list[Any]]]


async def run_pipelined(
    client: RedisClient,
    calls: Sequence[ScriptCall],
    send: Send | None = None,
    load: Callable[[set[LuaScript]], Awaitable[None]] | None = None,
) -> list[Any]:
    """`calls` in one pipeline (no MULTI: with a Cluster, redis-py splits it per master), each
    one's result or error, in order. Raises only when Redis could not be asked at all. Calls
    refused with NOSCRIPT are sent again after loading their scripts (the others ran, so a
    call sent again runs after the calls that followed it). `send` sends one pipeline
    (default: `pipeline_calls` on `client`); `load` loads the lost scripts (default: each)."""
    send = send or functools.partial(pipeline_calls, client)
    results = await send(calls)
    lost = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if lost:
        scripts = {calls[i].script for i in lost}
        if load is not None:
            await load(scripts)
        else:
            for script in scripts:
                await script.load(client)
        again = await send([calls[i] for i in lost])
        for i, result in zip(lost, again, strict=True):
            results[i] = result
    return results


async def pipeline_calls(client: RedisClient, calls: Sequence[ScriptCall]) -> list[Any]:
    async with client.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
        return list(await pipe.execute(raise_on_error=False))
