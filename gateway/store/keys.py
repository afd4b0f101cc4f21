"""Where runtime keys (made with `POST /admin/keys`) are kept: Redis when the config has a
`redis:` section (every replica reads the same), else a SQLite file (`keys_db`), durable across
restarts with no server to run.

A key is stored as its SHA-256 digest and its settings, never its secret. Every change bumps a
version number in the same write, so a replica finds out that something changed by reading
one small value, and reloads the keys only then.
"""

from __future__ import annotations

import abc
import asyncio
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gateway.store.redis import SharedRedis

if TYPE_CHECKING:
    import sqlite3  # imported where it is used: about 1 MB a gateway without keys_db never needs


@dataclass(frozen=True, slots=True)
class KeyRecord:
    name: str
    sha256: str  # hex digest of the secret
    plan: str | None = None
    feature: str | None = None
    budget_usd: float | None = None
    budget_period: str | None = None
    tiers: tuple[str, ...] | None = None
    expires_at: float | None = None  # epoch seconds
    admin: bool = False
    disabled: bool = False
    created_at: float = 0.0

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> KeyRecord:
        data: dict[str, Any] = orjson.loads(raw)
        tiers = data.get("tiers")
        data["tiers"] = tuple(tiers) if tiers is not None else None
        known = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**known)


class KeyExists(Exception):
    """A key of that name is stored already."""


class KeyStore(abc.ABC):
    @abc.abstractmethod
    async def version(self) -> int:
        """A number that changes whenever a key is created, changed or removed."""

    @abc.abstractmethod
    async def load(self) -> tuple[int, list[KeyRecord]]:
        """Every stored key, with the version they are of."""

    @abc.abstractmethod
    async def create(self, record: KeyRecord) -> None:
        """Store a new key; KeyExists when its name is taken."""

    @abc.abstractmethod
    async def replace(self, record: KeyRecord) -> bool:
        """Store a changed key; False when there is no key of its name."""

    @abc.abstractmethod
    async def delete(self, name: str) -> bool:
        """Remove a key; False when there was none of that name."""

    async def aclose(self) -> None:  # noqa: B027 - only some stores hold anything
        """Release what the store holds."""


class SqliteKeyStore(KeyStore):
    """One SQLite file. Each operation opens its own connection in a worker thread (the event
    loop never waits on the disk), and writes are transactions: a crash leaves the file whole."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        import sqlite3

        connection = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS keys (name TEXT PRIMARY KEY, record TEXT NOT NULL)"
            )
            connection.execute("CREATE TABLE IF NOT EXISTS meta (version INTEGER NOT NULL)")
            connection.execute(
                "INSERT INTO meta (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM meta)"
            )
            self._ready = True
        return connection

    def _run(self, work: Any) -> Any:
        connection = self._connect()
        try:
            return work(connection)
        finally:
            connection.close()

    def _write(self, connection: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> int:
        connection.execute("BEGIN IMMEDIATE")
        try:
            changed = connection.execute(sql, args).rowcount
            if changed:
                connection.execute("UPDATE meta SET version = version + 1")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return int(changed)

    async def version(self) -> int:
        if not self.path.exists():  # made with the first key, not before
            return 0

        def read(connection: sqlite3.Connection) -> int:
            return int(connection.execute("SELECT version FROM meta").fetchone()[0])

        return int(await asyncio.to_thread(self._run, read))

    async def load(self) -> tuple[int, list[KeyRecord]]:
        if not self.path.exists():
            return 0, []

        def read(connection: sqlite3.Connection) -> tuple[int, list[KeyRecord]]:
            version = int(connection.execute("SELECT version FROM meta").fetchone()[0])
            rows = connection.execute("SELECT record FROM keys ORDER BY name").fetchall()
            return version, [KeyRecord.from_json(row[0]) for row in rows]

        result: tuple[int, list[KeyRecord]] = await asyncio.to_thread(self._run, read)
        return result

    async def create(self, record: KeyRecord) -> None:
        def write(connection: sqlite3.Connection) -> int:
            return self._write(
                connection,
                "INSERT OR IGNORE INTO keys (name, record) VALUES (?, ?)",
                (record.name, record.to_json().decode()),
            )

        if not await asyncio.to_thread(self._run, write):
            raise KeyExists(record.name)

    async def replace(self, record: KeyRecord) -> bool:
        def write(connection: sqlite3.Connection) -> int:
            return self._write(
                connection,
                "UPDATE keys SET record = ? WHERE name = ?",
                (record.to_json().decode(), record.name),
            )

        return bool(await asyncio.to_thread(self._run, write))

    async def delete(self, name: str) -> bool:
        def write(connection: sqlite3.Connection) -> int:
            return self._write(connection, "DELETE FROM keys WHERE name = ?", (name,))

        return bool(await asyncio.to_thread(self._run, write))


class RedisKeyStore(KeyStore):
    """A hash `gw:{keys}` (name → record) and its version counter, in one hash slot; each
    change is one MULTI/EXEC with the version bump."""

    KEYS = "gw:{keys}"
    VERSION = "gw:{keys}:version"

    def __init__(self, redis: SharedRedis) -> None:
        self._redis = redis

    async def version(self) -> int:
        raw = await self._redis.client.get(self.VERSION)
        return int(raw) if raw is not None else 0

    async def load(self) -> tuple[int, list[KeyRecord]]:
        async with self._redis.client.pipeline(transaction=True) as pipe:
            pipe.get(self.VERSION)
            pipe.hgetall(self.KEYS)
            version, stored = await pipe.execute()
        records = [KeyRecord.from_json(raw) for raw in stored.values()]
        return int(version or 0), sorted(records, key=lambda record: record.name)

    async def create(self, record: KeyRecord) -> None:
        async with self._redis.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self.KEYS, record.name, record.to_json())
            pipe.incr(self.VERSION)
            created, _ = await pipe.execute()
        if not created:
            raise KeyExists(record.name)

    async def replace(self, record: KeyRecord) -> bool:
        client = self._redis.client
        if not await client.hexists(self.KEYS, record.name):
            return False
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(self.KEYS, record.name, record.to_json())
            pipe.incr(self.VERSION)
            await pipe.execute()
        return True

    async def delete(self, name: str) -> bool:
        async with self._redis.client.pipeline(transaction=True) as pipe:
            pipe.hdel(self.KEYS, name)
            pipe.incr(self.VERSION)
            removed, _ = await pipe.execute()
        return bool(removed)


def build_key_store(keys_db: str, redis: SharedRedis | None, config_path: str | None) -> KeyStore:
    """Redis when the config has a `redis:` section, else the SQLite file `keys_db` (a
    relative path is taken from the config file's folder, else the working directory)."""
    if redis is not None:
        return RedisKeyStore(redis)
    path = Path(keys_db)
    if not path.is_absolute() and config_path is not None:
        path = Path(config_path).resolve().parent / path
    return SqliteKeyStore(path)
