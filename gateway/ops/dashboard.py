"""GET /dashboard: a small static page of usage, cost, errors and fallbacks.

The page itself holds no data, so it is served to anyone. Its numbers come from
`GET /dashboard/usage`, which answers exactly as `/v1/usage` does for an admin key (everyone's
usage) when `usage.dashboard` is true or the caller presents an admin key, from
`GET /dashboard/budgets` (each budget's spend in its period, same access) and from the public
`/metrics` (fallbacks). The page's files ship as package data in `gateway/static/`.
"""

from __future__ import annotations

import time
from functools import cache
from importlib import resources

import orjson
from aiohttp import web

from gateway.errors import NotFound, ServiceUnavailable
from gateway.http.answers import json_response
from gateway.http.request import PROCESS
from gateway.limits.base import LimiterUnavailable
from gateway.limits.budgets import from_nano, period_end, period_id
from gateway.ops.admin import require_admin
from gateway.ops.usage import answer_usage
from gateway.pipeline.budgets import configured_budgets

# The page's files and their content types; nothing else under /dashboard/ is served.
ASSETS = {
    "dashboard.html": "text/html",
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
}

# Everything the page loads comes from the gateway itself: it works offline, and a script
# injected by some bug could not send anything elsewhere.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> bytes:
    return resources.files("gateway").joinpath("static", name).read_bytes()


def _serve(name: str) -> web.Response:
    response = web.Response(body=_asset(name), content_type=ASSETS[name], charset="utf-8")
    response.headers.update(_HEADERS)
    return response


async def page(request: web.Request) -> web.StreamResponse:
    return _serve("dashboard.html")


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise NotFound(f"Invalid URL ({request.method} {request.path}).")
    return _serve(name)


async def budgets(request: web.Request) -> web.StreamResponse:
    """Every configured budget with its spend (and what requests in flight have reserved) in
    its current period, for the page's budgets table. Same access as the usage data."""
    process = request.app[PROCESS]
    config = process.current.config
    if not config.usage.dashboard:
        require_admin(request)
    configured = configured_budgets(config)
    try:
        used = await process.limiter.budget_used(configured)
    except LimiterUnavailable:
        raise ServiceUnavailable(
            "The limits backend cannot be asked for budgets right now.",
            code="limits_unavailable",
        ) from None
    now = time.time()
    rows = [
        {
            "scope": charge.scope,
            "name": charge.name,
            "period": charge.period,
            "period_id": period_id(charge.period, now),
            "budget_usd": from_nano(charge.limit),
            "spent_usd": from_nano(spent),
            "remaining_usd": from_nano(max(0, charge.limit - spent)),
            "resets_at": period_end(charge.period, now),
        }
        for (_, charge), spent in zip(configured, used, strict=True)
    ]
    response = json_response(orjson.dumps({"object": "list", "data": rows}))
    response.headers["Cache-Control"] = "no-store"
    return response


async def usage(request: web.Request) -> web.StreamResponse:
    """`/v1/usage`'s answer with the admin view: all keys."""
    if not request.app[PROCESS].current.config.usage.dashboard:
        require_admin(request)
    response = await answer_usage(request, None)
    response.headers["Cache-Control"] = "no-store"
    return response
