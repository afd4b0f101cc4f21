"""CORS, for browser apps on another origin (`server.cors.allow_origins`).

The policy is read from the runtime's config on each request, so a reload turns it on, off or
changes the origins at once. A preflight (`OPTIONS` with `Access-Control-Request-Method`) is
answered here, before auth and routing: browsers send it without the key, for any path. Every
other answer to an allowed origin carries `Access-Control-Allow-Origin` and the headers a page
may read; the middleware hands them to `RequestState.stamp`, which writes them on whatever
answer goes out (JSON, an error, a stream's headers). A disallowed origin gets no CORS header
at all, so its browser refuses to hand the answer to the page; its preflight is a 403.
"""

from __future__ import annotations

import re

from aiohttp import web

from gateway.config import CorsConfig
from gateway.errors import PermissionDenied

ALLOW_METHODS = "GET, POST, PATCH, DELETE, OPTIONS"

# What a preflight allows when it names no headers. A preflight that names some gets exactly
# those back: the SDKs add headers of their own over time (x-stainless-*), and `*` would not
# cover `Authorization`.
DEFAULT_ALLOW_HEADERS = ", ".join(
    (
        "Authorization",
        "Content-Type",
        "x-api-key",
        "anthropic-version",
        "anthropic-beta",
        "anthropic-dangerous-direct-browser-access",
        "OpenAI-Organization",
        "OpenAI-Project",
        "X-Request-Id",
        "X-Gateway-Feature",
        "X-Gateway-User",
        "X-Gateway-Conversation",
        "x-stainless-arch",
        "x-stainless-lang",
        "x-stainless-os",
        "x-stainless-package-version",
        "x-stainless-retry-count",
        "x-stainless-runtime",
        "x-stainless-runtime-version",
        "x-stainless-timeout",
    )
)

# The answer headers a page may read. Browsers take no wildcard patterns here, and `*` alone
# is refused for credentialed requests, so each is named.
EXPOSE_HEADERS = ", ".join(
    (
        "x-request-id",
        "request-id",
        "x-gateway-tier",
        "x-gateway-model",
        "x-gateway-attempts",
        "x-should-retry",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "retry-after",
        "retry-after-ms",
    )
)

_HEADER_LIST = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$")
_MAX_REQUESTED_HEADERS = 4096

_ANY_ORIGIN = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": EXPOSE_HEADERS}
# With a list of origins the answer depends on the request's Origin: caches must know.
_VARY_ONLY = {"Vary": "Origin"}


def _allowed(cors: CorsConfig, origin: str | None) -> bool:
    return origin is not None and origin.lower() in cors.allow_origins


def answer_headers(cors: CorsConfig, origin: str | None) -> dict[str, str] | None:
    """The CORS headers of an answer to a request from `origin` (None: CORS is off)."""
    if not cors.allow_origins:
        return None
    if "*" in cors.allow_origins:
        return _ANY_ORIGIN
    if origin is None or not _allowed(cors, origin):
        return _VARY_ONLY
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Expose-Headers": EXPOSE_HEADERS,
        "Vary": "Origin",
    }


def is_preflight(request: web.Request) -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def preflight(cors: CorsConfig, request: web.Request) -> web.Response:
    """The answer to a preflight when CORS is on: 204 with what the actual request may use,
    or PermissionDenied for an origin not on the list."""
    origin = request.headers.get("Origin")
    any_origin = "*" in cors.allow_origins
    if not any_origin and not _allowed(cors, origin):
        raise PermissionDenied(
            f"Origin {origin!r} is not allowed by server.cors.allow_origins.",
            code="cors_origin_not_allowed",
        )
    requested = request.headers.get("Access-Control-Request-Headers", "").strip()
    if (
        not requested
        or len(requested) > _MAX_REQUESTED_HEADERS
        or not _HEADER_LIST.match(requested)
    ):
        requested = DEFAULT_ALLOW_HEADERS
    headers = {
        "Access-Control-Allow-Origin": "*" if any_origin or origin is None else origin,
        "Access-Control-Allow-Methods": ALLOW_METHODS,
        "Access-Control-Allow-Headers": requested,
        "Access-Control-Max-Age": str(cors.max_age_s),
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }
    return web.Response(status=204, headers=headers)
