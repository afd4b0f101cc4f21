"""Per client address: how many of its connections, or bodies, are not yet complete, so that
one slow or hostile client cannot hold an unbounded number of them (`server.protocol` counts
connections until their first request's headers are in, `http.body` a body read slowly)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("gateway.protocol")


class PendingClients:
    """Per client address: connections (or bodies) not yet complete."""

    def __init__(self, cap: Callable[[], int]) -> None:
        self._cap = cap  # read each time: a reload applies at once; 0 means no cap
        self._counts: dict[str, int] = {}
        self._refused_since_log = 0
        self._logged_at = float("-inf")

    def enter(self, address: str) -> bool:
        """Count one more for `address`; False (and nothing counted) past the cap."""
        count = self._counts.get(address, 0)
        cap = self._cap()
        if cap and count >= cap:
            self._refused(address)
            return False
        self._counts[address] = count + 1
        return True

    def leave(self, address: str) -> None:
        count = self._counts.get(address, 0) - 1
        if count > 0:
            self._counts[address] = count
        else:
            self._counts.pop(address, None)

    def count(self, address: str) -> int:
        return self._counts.get(address, 0)

    def _refused(self, address: str) -> None:
        # One line a minute: a flood of refused connections must not flood the log too.
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._logged_at >= 60.0:
            log.warning(
                "too many incomplete requests from one address; refusing more",
                extra={"remote": address, "refused": self._refused_since_log},
            )
            self._logged_at = now
            self._refused_since_log = 0
