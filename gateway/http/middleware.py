"""The outermost layer of every request: request id, timing, the access log line, and any
exception turned into an OpenAI-shaped error.

It wraps the application's own request handler (routing included) rather than being one of
aiohttp's middlewares: an application with any middleware gets another of aiohttp's around
each handler (it sets `match_info.current_app`, for sub-applications, which the gateway has
none of), and a stream keeps every such coroutine frame for as long as it lasts. So the app
has no middlewares, and `gateway.server.protocol` serves it through `wrap` (kept on the app
under `OUTERMOST`). A 404 or 405 from the router is raised inside, as it was under a
middleware."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from gateway.errors import GatewayError, MethodNotAllowed, NotFound
from gateway.http import cors
from gateway.http.answers import error_response
from gateway.http.cache import answer_hit, store_answer
from gateway.http.request import STATE
from gateway.http.stream import RelayedStream
from gateway.logs import ACCESS_LOG
from gateway.pipeline.cache import CacheHit
from gateway.pipeline.context import RequestState, request_id_from
from gateway.pipeline.process import GatewayProcess
from gateway.pipeline.settle import finish

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Wrap = Callable[[Handler], Handler]
# The app's `wrap`, for the server to serve the app through.
OUTERMOST: web.AppKey[Wrap] = web.AppKey("gateway_outermost")
errors_log = logging.getLogger("gateway.error")


def _from_aiohttp(request: web.Request, exc: web.HTTPException) -> GatewayError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}.")
    if isinstance(exc, web.HTTPNotFound):
        return NotFound(f"Invalid URL ({request.method} {request.path}).")
    return GatewayError(exc.reason, status=exc.status, error_type="invalid_request_error")


ErrorWriter = Callable[[GatewayError, RequestState], web.Response]


def gateway_middleware(
    process: GatewayProcess,
    error_writers: Sequence[tuple[str, ErrorWriter]] = (),
) -> Wrap:
    """What wraps the app's request handler in the layer. `error_writers`: (path prefix,
    writer) for the APIs whose errors are not in OpenAI's shape (`/v1/messages` speaks
    Anthropic's); the first matching prefix writes the error, else OpenAI's envelope. The
    process is given here: the request's app is known only once it is routed, inside."""

    def write_error(request: web.Request, error: GatewayError, state: RequestState) -> web.Response:
        path = request.path
        for prefix, writer in error_writers:
            if path.startswith(prefix):
                return writer(error, state)
        return error_response(error, state)

    def wrap(handler: Handler) -> Handler:
        async def middleware(request: web.Request) -> web.StreamResponse:
            state = RequestState(request_id_from(request.headers.get("x-request-id")))
            request[STATE] = state
            status = 499  # stays so when the client went away first
            task = asyncio.current_task()
            process.drain.serving(task)
            try:
                cors_config = process.current.config.server.cors
                response: web.StreamResponse
                try:
                    if not cors_config.allow_origins:
                        response = await handler(request)
                    elif cors.is_preflight(request):
                        response = cors.preflight(cors_config, request)
                    else:
                        origin = request.headers.get("Origin")
                        state.cors_headers = cors.answer_headers(cors_config, origin)
                        response = await handler(request)
                except CacheHit as hit:  # found at admission: no upstream call was made
                    response = await answer_hit(request, state, hit)
                if type(response) is RelayedStream:
                    # Relayed here, with the handler's frame (and routing's) gone.
                    await response.relay(request)
                if not response.prepared:  # a stream stamped its headers and was sent already
                    state.stamp(response.headers)
                    # Sent here rather than by aiohttp after this returns: the client has its answer
                    # before the bookkeeping below (metrics, usage record), not after it.
                    await response.prepare(request)
                    await response.write_eof()
                status = response.status
                if state.cache_plan is not None:  # a cache miss to store, now the client has it
                    await store_answer(state, response)
                return response
            except GatewayError as error:
                state.error = state.error or error.message
                answer = write_error(request, error, state)
                status = answer.status  # the dialect's own (Anthropic answers 529 for 503)
                return answer
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                answer = write_error(request, _from_aiohttp(request, exc), state)
                status = answer.status
                return answer
            except (asyncio.CancelledError, ConnectionResetError):
                if process.drain.grace_over:
                    # Ended by the gateway's shutdown, not by the client: 503, as the client saw.
                    status = 503
                    state.error = state.error or "ended by gateway shutdown"
                else:
                    state.error = state.error or "client disconnected"
                raise
            except Exception:
                errors_log.exception("unhandled error", extra={"request_id": state.request_id})
                status = 500
                state.error = state.error or "unhandled error"
                if state.answer_started:
                    # A stream's answer is under way: a second answer would be written into its
                    # body. The connection is dropped instead, so the client sees a cut stream.
                    raise
                return write_error(
                    request, GatewayError("The gateway failed to process the request."), state
                )
            finally:
                process.drain.served(task)
                finish(process, state, status)
                _access_log(request, state, status)

        return middleware

    return wrap


_NOT_LOGGED = frozenset(("/healthz", "/readyz", "/metrics"))


def _access_log(request: web.Request, state: RequestState, status: int) -> None:
    if request.path in _NOT_LOGGED or not ACCESS_LOG.logger.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": state.request_id,
        "method": request.method,
        "path": request.path,
        "status": status,
        "key": state.principal.name if state.principal else None,
        "feature": state.feature,
        "tier": state.tier,
        "model": state.model,
        "attempts": state.attempts,
        "stream": state.stream,
        "latency_ms": round((time.perf_counter() - state.started) * 1000, 2),
    }
    if state.error:
        fields["error"] = state.error
    ACCESS_LOG.write("request", fields)
