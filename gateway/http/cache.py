"""The response cache at the HTTP edge: writing a hit (a JSON body, or a stream's events
replayed as SSE, one write per event as they were first sent), and storing a miss's answer
once the client has it whole."""

from __future__ import annotations

import time

from aiohttp import web

from gateway.http.answers import json_response
from gateway.http.stream import SSE_HEADERS
from gateway.pipeline import cache
from gateway.pipeline.context import RequestState
from gateway.pipeline.cost import cost_usd, tokens_of


async def answer_hit(
    request: web.Request, state: RequestState, hit: cache.CacheHit
) -> web.StreamResponse:
    """The cached answer: a JSON body is sent by the middleware like any other; a stream is
    written here, each event on its own, without waiting for any upstream."""
    answer = hit.answer
    if answer.events is None:
        return json_response(answer.body or b"")
    response = web.StreamResponse(status=200, headers=SSE_HEADERS)
    state.stamp(response.headers)
    state.answer_started = True
    await response.prepare(request)
    for event in answer.events:
        await response.write(event)
        if state.first_token_at is None:
            state.first_token_at = time.perf_counter()
    state.streamed_events = len(answer.events)
    await response.write_eof()
    return response


async def store_answer(state: RequestState, response: web.StreamResponse) -> None:
    """Store what a miss answered (the pipeline checks it was whole and successful)."""
    runtime = state.runtime
    cost = cost_usd(runtime.config, state.model, tokens_of(state)) if runtime else 0.0
    body = response.body if isinstance(response, web.Response) else None
    await cache.store(state, response.status, body if isinstance(body, bytes) else None, cost)
