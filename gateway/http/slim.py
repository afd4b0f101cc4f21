"""Smaller containers inside aiohttp's per-connection objects, for connections that stay open.

One gateway process holds thousands of streams open at once (bench/streams_memory_bench.py),
and aiohttp's server side keeps two `collections.deque`s per client connection for the whole
stream: the connection's queue of parsed requests not yet handled (`RequestHandler._messages`)
and the request body's buffer (`StreamReader._buffer`). A deque allocates a 64-slot block even
when empty, 760 bytes each; both of these are nearly always empty (the body has been read, no
request is pipelined behind a stream). `LeanQueue`, a list with the two deque methods aiohttp
calls on them, costs 56.

These are aiohttp's private attributes: each swap happens only when the attribute is there
and is a deque (else aiohttp's own is kept, which is only bigger), and
tests/test_stream_memory.py fails if an aiohttp upgrade makes a swap stop happening.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from aiohttp import StreamReader
from aiohttp.web_protocol import RequestHandler


class LeanQueue(list[Any]):
    """The deque operations aiohttp uses on these two (`append`, `popleft`, `appendleft`,
    indexing, `len`, truth, `clear`) on a list. `popleft` shifts the list, which costs nothing
    at their sizes: at most 32 requests queued (`web_protocol.MAX_MSG_QUEUE_SIZE`), at most a
    few body chunks, and nearly always none or one."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


def slim_connection(handler: RequestHandler) -> None:
    """Give a new connection's handler a `LeanQueue` for its queue of parsed requests."""
    messages = getattr(handler, "_messages", None)
    if type(messages) is deque and not messages:
        handler._messages = LeanQueue()  # type: ignore[assignment]


def slim_body(content: StreamReader) -> None:
    """Give a request body's reader, once the whole body is read, a `LeanQueue` for a buffer."""
    buffer = getattr(content, "_buffer", None)
    if type(buffer) is deque and not buffer and content.is_eof():
        content._buffer = LeanQueue()  # type: ignore[assignment]
