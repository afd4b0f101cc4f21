"""GET /healthz (liveness) and /readyz (readiness)."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.handlers.common import RUNTIME
from gateway.relay import json_response


async def healthz(request: web.Request) -> web.StreamResponse:
    return json_response(b'{"status":"ok"}')


async def readyz(request: web.Request) -> web.StreamResponse:
    holder = request.app[RUNTIME]
    reasons = []
    if holder.draining:
        reasons.append("draining: the gateway is shutting down")
    if reasons:
        return json_response(orjson.dumps({"status": "not_ready", "reasons": reasons}), 503)
    return json_response(b'{"status":"ready"}')
