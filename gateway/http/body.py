"""Reading a request's body: bounded by `server.max_body_mb`, parsed as one JSON object."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import HttpVersion11, web

from gateway.errors import InvalidRequest, RateLimited, RequestTimeout, RequestTooLarge
from gateway.http.request import PROCESS
from gateway.http.slim import slim_body

TOO_MANY_PENDING = "too_many_pending_requests"


async def expect_continue(request: web.Request) -> None:
    """`Expect: 100-continue`: the client waits for `100 Continue` before sending its body.
    Sent only for a body within `server.max_body_mb`; a bigger one is answered 413 by the
    handler (before reading it), so the client never sends it."""
    declared = request.content_length
    if declared is not None and declared > request.app[PROCESS].current.max_body_bytes:
        return
    expect = request.headers.get("Expect", "").lower()
    if request.version == HttpVersion11 and expect == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # what follows is the answer itself


async def read_body(request: web.Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The body, refused as soon as it passes `limit` bytes: nothing past it is read. A body
    not all here yet must arrive within `timeout_s` (408 otherwise), and counts against its
    address's `server.max_pending_per_address` while it does."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    if timeout_s is None or request.content.is_eof():
        return await _read_up_to(request, limit)  # all buffered already: no timer needed
    pending = request.app[PROCESS].pending
    address = request.remote or ""
    if address and not pending.enter(address):
        raise RateLimited(
            "Too many requests from your address are still sending their body.",
            code=TOO_MANY_PENDING,
        )
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_up_to(request, limit)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {timeout_s:g} seconds.",
            code="request_timeout",
        ) from None
    finally:
        if address:
            pending.leave(address)


async def _read_up_to(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            slim_body(request.content)  # read: a stream keeps its reader for minutes
            break
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than the gateway's limit of {limit} bytes.")


async def read_json_object(
    request: web.Request, limit: int, timeout_s: float | None = None
) -> dict[str, Any]:
    raw = await read_body(request, limit, timeout_s)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The gateway expects a JSON "
            f"payload ({exc.msg} at position {exc.pos}).",
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, but got {json_type(body)} instead.",
            code="invalid_type",
        )
    return body


def json_type(value: object) -> str:
    """How OpenAI names a JSON value's type in its error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
