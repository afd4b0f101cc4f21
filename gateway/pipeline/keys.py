"""Runtime keys as the process knows them: the stored keys, by digest, kept in step with the
store.

Every replica polls the store's version (one small read every `poll_s`) and reloads the keys
when it changed, so a key created, changed or revoked on one replica is in force on every
other within that interval; on the replica that made the change, at once. Until the first
load succeeds, no runtime key is known (config keys still work); a store that cannot be read
later keeps the last keys known, and says so once per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway.store.keys import KeyRecord, KeyStore

log = logging.getLogger("gateway.keys")

POLL_S = 0.5


class RuntimeKeys:
    def __init__(self, store: KeyStore | None, poll_s: float = POLL_S) -> None:
        self.store = store
        self.poll_s = poll_s
        self.version: int | None = None
        self.by_name: dict[str, KeyRecord] = {}
        self._by_digest: dict[bytes, KeyRecord] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def lookup(self, digest: bytes) -> KeyRecord | None:
        """The stored key with this SHA-256 digest. A dict lookup, not a constant-time scan:
        what it is keyed by is a hash of the secret, which tells a timing attacker nothing
        about the secret itself."""
        return self._by_digest.get(digest)

    async def refresh(self) -> None:
        """Reload the keys when the store's version moved (or on the first call)."""
        if self.store is None:
            return
        try:
            version = await self.store.version()
            if version != self.version:
                version, records = await self.store.load()
                self._install(version, records)
        except Exception as exc:
            if not self._failing:
                log.warning(
                    "runtime keys unavailable; keeping the last ones known",
                    extra={"error": str(exc)},
                )
                self._failing = True
            return
        if self._failing:
            log.info("runtime keys available again")
            self._failing = False

    def _install(self, version: int, records: list[KeyRecord]) -> None:
        self.version = version
        self.by_name = {record.name: record for record in records}
        self._by_digest = {bytes.fromhex(record.sha256): record for record in records}

    async def start(self) -> None:
        if self.store is None:
            return
        await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self.refresh()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.store is not None:
            await self.store.aclose()
