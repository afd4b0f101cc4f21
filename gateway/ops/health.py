"""GET /healthz (liveness) and /readyz (readiness)."""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from gateway.http.answers import json_response
from gateway.http.request import PROCESS
from gateway.limits.base import LimiterUnavailable

PING_TIMEOUT_S = 1.0


async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response(b'{"status":"ok"}')


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready when the config is loaded, the process is not draining, and the limits backend
    answers, or does not need to (`on_backend_error: allow` serves without it)."""
    process = request.app[PROCESS]
    reasons: list[str] = []
    degraded: list[str] = []
    if process.draining:
        reasons.append("draining: the gateway is shutting down")
    try:
        await asyncio.wait_for(process.limiter.ping(), PING_TIMEOUT_S)
    except (LimiterUnavailable, TimeoutError):
        if process.current.config.limits.on_backend_error == "deny":
            reasons.append("limits backend unreachable (on_backend_error: deny)")
        else:
            degraded.append(
                "limits backend unreachable: serving without limits (on_backend_error: allow)"
            )
    if reasons:
        body = {"status": "not_ready", "reasons": reasons + degraded}
        return json_response(orjson.dumps(body), 503)
    body = {"status": "ready", "degraded": degraded} if degraded else {"status": "ready"}
    return json_response(orjson.dumps(body))
