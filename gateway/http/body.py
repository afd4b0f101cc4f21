"""Reading a request's body: bounded by `server.max_body_mb`, parsed as one JSON object."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import InvalidRequest, RequestTimeout, RequestTooLarge


async def read_body(request: web.Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The body, refused as soon as it passes `limit` bytes: nothing past it is read. A body
    not all here yet must arrive within `timeout_s` (408 otherwise)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    if timeout_s is None or request.content.is_eof():
        return await _read_up_to(request, limit)  # all buffered already: no timer needed
    try:
        async with asyncio.timeout(timeout_s):
            return await _read_up_to(request, limit)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {timeout_s:g} seconds.",
            code="request_timeout",
        ) from None


async def _read_up_to(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
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
