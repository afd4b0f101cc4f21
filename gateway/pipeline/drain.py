"""Draining at shutdown: requests in flight may finish within `server.shutdown_grace_s`; after
that, streams still running are ended with an in-band error event instead of a cut
connection, so clients know to retry."""

from __future__ import annotations

import asyncio


class Drain:
    def __init__(self) -> None:
        self.grace_over = False
        self._tasks: set[asyncio.Task[object]] = set()

    def serving(self, task: asyncio.Task[object] | None) -> None:
        """`task` serves a request that shutdown may have to end (until `served`)."""
        if task is not None:
            self._tasks.add(task)

    def served(self, task: asyncio.Task[object] | None) -> None:
        if task is not None:
            self._tasks.discard(task)

    def end_remaining(self) -> int:
        """The grace period is over: cancel every request still running. Streams catch
        the cancellation, see `grace_over`, and end with an error event."""
        self.grace_over = True
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        return len(tasks)
