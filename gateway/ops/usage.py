"""GET /v1/usage: usage aggregated by feature, model, tier, key, user and day.

A key sees only its own usage; an admin key sees everyone's.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.errors import InvalidRequest
from gateway.http.answers import json_response
from gateway.http.request import PROCESS, begin
from gateway.usage.query import UsageQuery, UsageQueryError


async def usage(request: web.Request) -> web.StreamResponse:
    _, _, principal = begin(request)
    return await answer_usage(request, None if principal.admin else principal.name)


async def answer_usage(request: web.Request, key_filter: str | None) -> web.Response:
    """The aggregates the query parameters ask for; `key_filter`: only that key's usage."""
    try:
        query = UsageQuery.from_params(request.query)
    except UsageQueryError as exc:
        raise InvalidRequest(exc.message, param=exc.param, code="invalid_value") from exc
    answer = await request.app[PROCESS].usage.query(query, key_filter)
    return json_response(orjson.dumps(answer))
