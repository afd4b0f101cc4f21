"""What every API handler does first: find the runtime, the key, and the JSON body."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import InvalidRequest, RequestTooLarge
from gateway.metrics import IN_FLIGHT
from gateway.pipeline.admission import ModelGate, admit_key, take_process_slot
from gateway.pipeline.attempts import AttemptLoop
from gateway.pipeline.context import RequestState
from gateway.pipeline.process import GatewayProcess
from gateway.pipeline.routing import Route
from gateway.pipeline.runtime import Runtime
from gateway.server.reload import Reloader
from gateway.tokens import TokenEstimate

PROCESS = web.AppKey("process", GatewayProcess)
RELOADER = web.AppKey("reloader", Reloader)
STATE = web.RequestKey("gateway_state", RequestState)


def state_of(request: web.Request) -> RequestState:
    state: RequestState = request[STATE]
    return state


def begin(request: web.Request, *, api_call: bool = False) -> tuple[Runtime, RequestState]:
    """Take this request's runtime snapshot and authenticate the caller. An API call (one
    that goes upstream) also takes a slot under `server.max_concurrent`."""
    process = request.app[PROCESS]
    runtime = process.current
    state = state_of(request)
    state.runtime = runtime
    runtime.enter()
    state.api_call = api_call
    headers = request.headers
    state.principal = runtime.auth.authenticate(
        headers.get("Authorization"), headers.get("x-api-key")
    )
    if api_call:
        take_process_slot(process, runtime, state)
    return runtime, state


async def admit(
    request: web.Request,
    runtime: Runtime,
    state: RequestState,
    route: Route,
    body: dict[str, Any],
    *,
    completion: bool,
) -> AttemptLoop:
    """The route is known: count the request in flight, admit it under the key's plan
    (reserving its token estimate when a tpm limit applies), and give back the attempt loop
    that will respect each model's own limits."""
    process = request.app[PROCESS]
    state.tier = route.tier
    IN_FLIGHT.labels(route.tier).inc()
    state.in_flight_tier = route.tier
    state.estimate = estimate = TokenEstimate(body, completion=completion)
    await admit_key(process, runtime, state, estimate)
    models = runtime.config.models
    return AttemptLoop(
        runtime.config,
        process.cooldowns,
        state,
        route,
        lambda name: models[name].provider,
        gate=ModelGate(process, runtime, state, estimate),
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` bytes: nothing past it is read."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than the gateway's limit of {limit} bytes.")


async def read_json_object(request: web.Request, limit: int) -> dict[str, Any]:
    raw = await read_body(request, limit)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            "We could not parse the JSON body of your request. The gateway expects a JSON "
            f"payload ({exc.msg} at position {exc.pos}).",
        ) from exc
    if not isinstance(body, dict):
        raise InvalidRequest(
            f"The request body must be a JSON object, but got {json_type(body)} instead.",
            code="invalid_type",
        )
    return body


def json_type(value: object) -> str:
    """How OpenAI names a JSON value's type in its error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def require(body: dict[str, Any], name: str) -> Any:
    if name not in body or body[name] is None:
        raise InvalidRequest(
            f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
        )
    return body[name]


def invalid_type(param: str, expected: str, value: object) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )
