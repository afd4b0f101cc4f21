"""GET /v1/models and /v1/models/{model}: what this key may ask for, in OpenAI's shapes."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import ModelNotFound
from gateway.http.answers import json_response
from gateway.http.request import begin

# OpenAI's model objects carry a creation time; the gateway's names exist since it started.
_STARTED = int(time.time())


def _model_object(name: str, owner: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _STARTED, "owned_by": owner}


async def list_models(request: web.Request) -> web.StreamResponse:
    runtime, _, principal = begin(request)
    names = runtime.router.visible_names(principal)
    data = [_model_object(name, owner) for name, owner in names]
    return json_response(orjson.dumps({"object": "list", "data": data}))


async def get_model(request: web.Request) -> web.StreamResponse:
    runtime, _, principal = begin(request)
    wanted = request.match_info["model"]
    for name, owner in runtime.router.visible_names(principal):
        if name == wanted:
            return json_response(orjson.dumps(_model_object(name, owner)))
    raise ModelNotFound(
        f"The model `{wanted}` does not exist or you do not have access to it.", param="model"
    )
