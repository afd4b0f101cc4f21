"""POST /v1/embeddings, `encoding_format` float or base64."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import InvalidRequest
from gateway.http.answers import json_response
from gateway.http.body import read_json_object
from gateway.http.request import PROCESS, begin
from gateway.ingress.openai_params import invalid_type, require
from gateway.pipeline.context import apply_request_context
from gateway.pipeline.request import admit


def validate_embeddings(body: dict[str, Any]) -> None:
    require(body, "model")
    value = require(body, "input")
    if isinstance(value, str):
        if not value:
            raise InvalidRequest("'input' must not be empty.", param="input")
    elif isinstance(value, list):
        if not value:
            raise InvalidRequest("'input' must not be an empty array.", param="input")
        all_text = all(isinstance(item, str) and item for item in value)
        all_ints = all(isinstance(item, int) and not isinstance(item, bool) for item in value)
        all_token_lists = all(
            isinstance(item, list)
            and item
            and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
            for item in value
        )
        if not (all_text or all_ints or all_token_lists):
            raise InvalidRequest(
                "'input' must be a string, an array of non-empty strings, an array of token "
                "integers, or an array of arrays of token integers.",
                param="input",
            )
    else:
        raise invalid_type("input", "a string or an array", value)
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise InvalidRequest(
            f"Invalid value for 'encoding_format': {encoding!r}. Supported values are: "
            "'float' and 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise InvalidRequest("'dimensions' must be a positive integer.", param="dimensions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    runtime, state, principal = begin(request, api_call=True)
    state.api = "embeddings"
    body = await read_json_object(request, runtime.max_body_bytes, runtime.body_timeout_s)
    validate_embeddings(body)
    apply_request_context(state, principal, request.headers, body)
    call = await admit(
        request.app[PROCESS], runtime, state, principal, body["model"], body, completion=False
    )
    answer = await call.embeddings(body)
    return json_response(answer.body)
