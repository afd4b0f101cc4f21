"""A connection of its own for a stream of script calls, sent and read without redis-py's
per-command machinery.

Each command through the client takes a connection from the pool and gives it back (a lock,
a condition, a timeout task and half a dozen observability hooks), then goes through retry and
response-callback layers: on this project's VM that is about 50 us of event-loop time per
call, more than the round trip itself. The limiter's batcher sends one call or one pipeline at
a time per lane, so a lane keeps one connection from the pool for good and writes the packed
commands on it and reads the replies straight off it.

What the client gives every command still holds here: the circuit breaker in front, a dead
connection retried once on a fresh one (a timeout never), Sentinel's connection finding the
primary again on connect and turning READONLY into a reconnect. A Redis Cluster needs its
per-slot routing: there is no lane for it (`ScriptLane.for_client` answers None).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.store.breaker import UNREACHABLE, GuardedRedis, RedisClient, RedisUnavailable
from gateway.store.scripts import ScriptCall


class ScriptLane:
    """One kept connection; `send` is never called again before it returned."""

    def __init__(self, client: GuardedRedis) -> None:
        self._client = client
        self._connection: AbstractConnection | None = None
        # The kept connection's reader as of its last send: whether the server closed it is
        # asked on every admission from a quota block (`ScriptBatcher.link_lost` reads it),
        # so it is kept here rather than looked up on the connection.
        self.reader: asyncio.StreamReader | None = None

    @classmethod
    def for_client(cls, client: RedisClient) -> ScriptLane | None:
        return cls(client) if isinstance(client, GuardedRedis) else None

    async def send(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Every call's reply, or its error (NOSCRIPT, a script error) in its place. Raises
        when Redis cannot be asked (as the client does, and the breaker learns of it)."""
        breaker = self._client.breaker
        breaker.check()
        try:
            try:
                replies = await self._send(calls)
            except RedisConnectionError as exc:
                if isinstance(exc, RedisUnavailable):
                    raise
                replies = await self._send(calls)  # a dead connection: once more, on a new one
        except UNREACHABLE as exc:
            breaker.failed(exc)
            raise
        breaker.succeeded()
        return replies

    async def _send(self, calls: Sequence[ScriptCall]) -> list[Any]:
        connection = self._connection
        if connection is None:
            connection = await self._client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            self._connection = connection
        commands = [("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args) for c in calls]
        try:
            if not connection.is_connected:
                # `connect` (not the implicit connect of a send): with Sentinel, it asks the
                # sentinels where the primary is now.
                await connection.connect()
            await connection.send_packed_command(
                connection.pack_commands(commands), check_health=False
            )
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as exc:  # the whole reply was read: the next one follows
                    replies.append(exc)
            reader = getattr(connection, "_reader", None)
            self.reader = reader if isinstance(reader, asyncio.StreamReader) else None
            return replies
        except BaseException:
            # Replies may be left unread (an error, a cancelled caller): start afresh.
            self.reader = None
            await connection.disconnect()
            raise

    async def aclose(self) -> None:
        self.reader = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await self._client.connection_pool.release(connection)
