"""Where usage records go: the sink interface the recorder writes batches to."""

from __future__ import annotations

import abc

from gateway.usage.record import UsageRecord


class UsageSink(abc.ABC):
    """One destination of usage records (a JSONL file, Redis).

    The recorder calls `write` with one batch at a time, never two at once for the same sink.
    A write that raises is retried later with the same records, so a sink should either write
    a batch whole or fail; a write that half succeeded before failing may be repeated
    (at-least-once).
    """

    name: str

    @abc.abstractmethod
    async def write(self, records: list[UsageRecord]) -> None:
        """Write the batch; raise on any failure."""

    async def aclose(self) -> None:  # noqa: B027 - a sink may hold nothing
        """Release files and connections. Called once, after the last write."""
