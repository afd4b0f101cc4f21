"""Whole answers written to the client: a JSON body, or a gateway error in OpenAI's shape."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import GatewayError
from gateway.pipeline.context import RequestState


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(
    error: GatewayError,
    state: RequestState,
    *,
    status: int | None = None,
    body: bytes | None = None,
) -> web.Response:
    """The error's answer: OpenAI's envelope, or another API's `body` and `status`."""
    response = web.Response(
        body=error.body_bytes() if body is None else body,
        status=error.status if status is None else status,
        content_type="application/json",
    )
    response.headers.update(error.headers)
    state.stamp(response.headers)
    response.headers["x-should-retry"] = "true" if error.should_retry else "false"
    if response.status == 413 or error.code == "too_many_pending_requests":
        # The rest of the body is not read: the connection cannot be reused.
        response.force_close()
    return response
