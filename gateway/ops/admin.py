"""POST /admin/reload: reload the config file now (admin keys only)."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.errors import GatewayError, PermissionDenied, ServiceUnavailable
from gateway.http.answers import json_response
from gateway.http.request import begin
from gateway.ops.reload import Reloader

RELOADER = web.AppKey("reloader", Reloader)


def require_admin(request: web.Request) -> None:
    _, _, principal = begin(request)
    if not principal.admin:
        raise PermissionDenied("This endpoint needs an admin key.", code="admin_required")


async def reload_config(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    reloader = request.app.get(RELOADER)
    if reloader is None:
        raise ServiceUnavailable(
            "This gateway was started without a config file to reload.", code="no_config_file"
        )
    result = await reloader.reload("admin request")
    if not result.ok:
        raise GatewayError(
            "The config file was rejected; the running config stays. Problems: "
            + "; ".join(result.problems),
            status=400,
            error_type="invalid_request_error",
            code="invalid_config",
        )
    return json_response(orjson.dumps({"status": "reloaded", "path": str(reloader.path)}))
