"""Reading a request's body: bounded by `server.max_body_mb`, parsed as one JSON object."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import InvalidRequest, RequestTooLarge


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` bytes: nothing past it is read."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
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


async def read_json_object(request: web.Request, limit: int) -> dict[str, Any]:
    raw = await read_body(request, limit)
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
