"""GET /dashboard: a small static page of usage, cost, errors and fallbacks.

The page itself holds no data, so it is served to anyone. Its numbers come from
`GET /dashboard/usage`, which answers exactly as `/v1/usage` does for an admin key (everyone's
usage) when `usage.dashboard` is true or the caller presents an admin key, and from the public
`/metrics` (fallbacks). The page's files ship as package data in `gateway/static/`.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from gateway.errors import NotFound
from gateway.http.request import PROCESS
from gateway.ops.admin import require_admin
from gateway.ops.usage import answer_usage

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


async def usage(request: web.Request) -> web.StreamResponse:
    """`/v1/usage`'s answer with the admin view: all keys."""
    if not request.app[PROCESS].current.config.usage.dashboard:
        require_admin(request)
    response = await answer_usage(request, None)
    response.headers["Cache-Control"] = "no-store"
    return response
