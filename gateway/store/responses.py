"""Stored Responses (`POST /v1/responses` with `store` not false), so that
`previous_response_id`, `GET /v1/responses/{id}` and `DELETE` work on every backend, translated
ones included.

A stored response keeps what continuing it needs: the Response object as the client got it,
and the conversation before its output (input items, instructions excluded, as OpenAI does:
`instructions` do not carry over). The next turn's history is that conversation plus the
response's output items, which are valid input items.

Two backends, chosen by the config at start: in memory (bounded by `responses.max_memory_mb`,
the oldest evicted first, and by `responses.ttl_s`), or the process's shared Redis when the
config has a `redis:` section (every replica sees every response; entries expire by TTL). A key
sees only its own responses: another key's id is "not found", as if it did not exist.
"""

from __future__ import annotations

import abc
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.config import ResponsesConfig
from gateway.errors import ServiceUnavailable
from gateway.store.redis import SharedRedis

log = logging.getLogger("gateway.responses")

KEY_PREFIX = "gw:response:"
# An output item's id → the id of the response it is in, so that an `item_reference` input
# item (the Vercel AI SDK sends one for each earlier assistant item) can be resolved.
ITEM_PREFIX = "gw:response-item:"


@dataclass(slots=True)
class StoredResponse:
    owner: str  # the key's name: only it may read, continue or delete the response
    response: dict[str, Any]  # the Response object, as the client got it
    conversation: list[dict[str, Any]]  # the input items before its output
    # The provider that keeps this response itself (a native upstream asked with `store`), so
    # that a next turn on the same provider can pass `previous_response_id` through; None
    # when only the gateway has it.
    kept_by: str | None = None
    root: str | None = None  # the first response of its chain; None: it is the first

    @property
    def id(self) -> str:
        return str(self.response.get("id", ""))

    @property
    def conversation_id(self) -> str:
        """The chain's name in usage records: the id of its first response."""
        return self.root or self.id

    def continued(self) -> list[dict[str, Any]]:
        """The conversation up to and including this response: the next turn's history."""
        return [*self.conversation, *self.output_items()]

    def output_items(self) -> list[dict[str, Any]]:
        output = self.response.get("output")
        return (
            [item for item in output if isinstance(item, dict)] if isinstance(output, list) else []
        )

    def item_ids(self) -> list[str]:
        return [str(item["id"]) for item in self.output_items() if isinstance(item.get("id"), str)]

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "owner": self.owner,
                "response": self.response,
                "conversation": self.conversation,
                "kept_by": self.kept_by,
                "root": self.root,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> StoredResponse | None:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("response"), dict):
            return None
        conversation = data.get("conversation")
        kept_by = data.get("kept_by")
        root = data.get("root")
        return cls(
            owner=str(data.get("owner", "")),
            response=data["response"],
            conversation=conversation if isinstance(conversation, list) else [],
            kept_by=kept_by if isinstance(kept_by, str) else None,
            root=root if isinstance(root, str) else None,
        )


@dataclass(frozen=True, slots=True)
class FoundItem:
    """An output item of a stored response, found by its id."""

    item: dict[str, Any]
    kept_by: str | None  # the provider that keeps the response it is in, if any


def _items_in(stored: StoredResponse, wanted: set[str]) -> dict[str, FoundItem]:
    return {
        str(item["id"]): FoundItem(item, stored.kept_by)
        for item in stored.output_items()
        if item.get("id") in wanted
    }


STORE_UNAVAILABLE = "The response store is unavailable; retry the request."


class ResponseStore(abc.ABC):
    """Where stored responses live. `get` and `delete` raise ServiceUnavailable when the
    backend cannot answer; `save` never raises (the client has its answer already, a failed
    save is logged)."""

    @abc.abstractmethod
    async def save(self, stored: StoredResponse, config: ResponsesConfig) -> None: ...

    @abc.abstractmethod
    async def get(self, response_id: str, owner: str) -> StoredResponse | None: ...

    @abc.abstractmethod
    async def delete(self, response_id: str, owner: str) -> bool: ...

    @abc.abstractmethod
    async def find_items(self, item_ids: list[str], owner: str) -> dict[str, FoundItem]:
        """The output items with these ids, of the owner's stored responses; an id not found
        (unknown, expired, another key's) is absent from the answer."""


class MemoryResponseStore(ResponseStore):
    """In this process, bounded by size (oldest out first) and by age."""

    def __init__(self) -> None:
        # id → (expires at, the stored bytes); in insertion order, the oldest first.
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._item_owner: dict[str, str] = {}  # output item id → the response it is in
        self._items_of: dict[str, list[str]] = {}  # response id → its output item ids

    @property
    def size_bytes(self) -> int:
        return self._bytes

    async def save(self, stored: StoredResponse, config: ResponsesConfig) -> None:
        raw = stored.to_bytes()
        limit = int(config.max_memory_mb * 1024 * 1024)
        if len(raw) > limit:
            log.warning("response too large to store", extra={"response_id": stored.id})
            return
        self._drop(stored.id)
        self._entries[stored.id] = (time.monotonic() + config.ttl_s, raw)
        self._bytes += len(raw)
        item_ids = stored.item_ids()
        self._items_of[stored.id] = item_ids
        for item_id in item_ids:
            self._item_owner[item_id] = stored.id
        while self._bytes > limit:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        entry = self._entries.get(response_id)
        if entry is None:
            return None
        expires_at, raw = entry
        if time.monotonic() >= expires_at:
            self._drop(response_id)
            return None
        stored = StoredResponse.from_bytes(raw)
        return stored if stored is not None and stored.owner == owner else None

    async def delete(self, response_id: str, owner: str) -> bool:
        if await self.get(response_id, owner) is None:
            return False
        self._drop(response_id)
        return True

    async def find_items(self, item_ids: list[str], owner: str) -> dict[str, FoundItem]:
        wanted = set(item_ids)
        found: dict[str, FoundItem] = {}
        for response_id in {self._item_owner.get(item_id) for item_id in wanted} - {None}:
            stored = await self.get(str(response_id), owner)
            if stored is not None:
                found |= _items_in(stored, wanted)
        return found

    def _drop(self, response_id: str) -> None:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self._bytes -= len(entry[1])
        for item_id in self._items_of.pop(response_id, ()):
            if self._item_owner.get(item_id) == response_id:
                del self._item_owner[item_id]


# Delete only when the owner matches, in one step: no other key's response can be removed by
# a race between the read and the delete.
_DELETE_OWNED = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, data = pcall(cjson.decode, raw)
if not ok or data['owner'] ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


class RedisResponseStore(ResponseStore):
    """In the shared Redis, one string per response, expiring after `responses.ttl_s`."""

    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis

    async def save(self, stored: StoredResponse, config: ResponsesConfig) -> None:
        from redis.exceptions import RedisError

        from gateway.store.breaker import RedisUnavailable

        ttl_s = max(1, int(config.ttl_s))
        try:
            async with self._redis.client.pipeline(transaction=False) as pipe:
                pipe.set(KEY_PREFIX + stored.id, stored.to_bytes(), ex=ttl_s)
                for item_id in stored.item_ids():
                    pipe.set(ITEM_PREFIX + item_id, stored.id, ex=ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            if not isinstance(exc, RedisUnavailable):  # the breaker logs outages itself
                log.warning(
                    "could not store a response",
                    extra={"response_id": stored.id, "error": str(exc)},
                )

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        from redis.exceptions import RedisError

        try:
            raw = await self._redis.client.get(KEY_PREFIX + response_id)
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(STORE_UNAVAILABLE, code="responses_unavailable") from exc
        if raw is None:
            return None
        stored = StoredResponse.from_bytes(raw)
        return stored if stored is not None and stored.owner == owner else None

    async def delete(self, response_id: str, owner: str) -> bool:
        from redis.exceptions import RedisError

        try:
            deleted = await self._redis.client.eval(
                _DELETE_OWNED, 1, KEY_PREFIX + response_id, owner
            )
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(STORE_UNAVAILABLE, code="responses_unavailable") from exc
        return bool(deleted)

    async def find_items(self, item_ids: list[str], owner: str) -> dict[str, FoundItem]:
        from redis.exceptions import RedisError

        wanted = set(item_ids)
        try:
            # One GET per key, not MGET: the keys need not share a Cluster slot.
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for item_id in wanted:
                    pipe.get(ITEM_PREFIX + item_id)
                response_ids = {str(r) for r in await pipe.execute() if r is not None}
            if not response_ids:
                return {}
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for response_id in response_ids:
                    pipe.get(KEY_PREFIX + response_id)
                raws = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(STORE_UNAVAILABLE, code="responses_unavailable") from exc
        found: dict[str, FoundItem] = {}
        for raw in raws:
            stored = StoredResponse.from_bytes(raw) if raw is not None else None
            if stored is not None and stored.owner == owner:
                found |= _items_in(stored, wanted)
        return found


def build_response_store(redis: SharedRedis | None) -> ResponseStore:
    return RedisResponseStore(redis) if redis is not None else MemoryResponseStore()
