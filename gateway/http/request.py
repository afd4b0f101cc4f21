"""What an HTTP request carries for the pipeline: the process (an app key), the request's state
(a request key, set by the middleware) and the caller's credentials."""

from __future__ import annotations

from aiohttp import web

from gateway.pipeline import request as pipeline
from gateway.pipeline.auth import Principal
from gateway.pipeline.context import RequestState
from gateway.pipeline.process import GatewayProcess
from gateway.pipeline.runtime import Runtime

PROCESS = web.AppKey("process", GatewayProcess)
STATE = web.RequestKey("gateway_state", RequestState)


def state_of(request: web.Request) -> RequestState:
    state: RequestState = request[STATE]
    return state


def begin(
    request: web.Request, *, api_call: bool = False
) -> tuple[Runtime, RequestState, Principal]:
    """`pipeline.request.begin` for this HTTP request: its runtime snapshot and its caller,
    with the key from `Authorization: Bearer` or `x-api-key`."""
    state = state_of(request)
    headers = request.headers
    runtime, principal = pipeline.begin(
        request.app[PROCESS],
        state,
        headers.get("Authorization"),
        headers.get("x-api-key"),
        api_call=api_call,
    )
    return runtime, state, principal
