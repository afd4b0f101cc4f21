"""An upstream stream's one timer: it bounds the stream by its deadline (the model's `total`)
and, once watched, by the idle timeout, whichever comes first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.providers.http import HTTPEventStream
from gateway.providers.wire import ConnectionPool, parse_target
from tests.fakes.loopback import LoopbackServer

EVENT = b'data: {"choices": []}\n\n'


async def paced(request: web.Request) -> web.StreamResponse:
    """An event every `pace` seconds for `events` events; then silence for a minute."""
    pace = float(request.query["pace"])
    events = int(request.query["events"])
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for _ in range(events):
        await response.write(EVENT)
        await asyncio.sleep(pace)
    await asyncio.sleep(60)
    return response


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/events", paced)
    server = LoopbackServer()
    await server.serve(app, handler_cancellation=True)  # a closed stream ends its handler
    try:
        yield f"http://127.0.0.1:{server.port}/events"
    finally:
        await server.stop()


async def read_until_failure(
    url: str, pace: float, events: int, total_s: float | None, idle_s: float
) -> tuple[UpstreamFailure, float, int]:
    """Read a stream until it fails: the failure, when (seconds from the start) and how
    many events came before it."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    pool = ConnectionPool(1)
    try:
        target = parse_target(f"{url}?pace={pace}&events={events}")
        response = await pool.post(target, b"Content-Length: 0\r\n\r\n", connect_s=2, total_s=None)
        deadline = None if total_s is None else started + total_s
        stream = HTTPEventStream(response, "up/m", deadline)
        received = 0
        try:
            while True:
                batch = await stream.next_raw_events()
                assert batch is not None, "the stream ended instead of failing"
                received += len(batch)
                if received == 1:
                    stream.watch_idle(idle_s)
        except UpstreamFailure as failure:
            return failure, loop.time() - started, received
        finally:
            await stream.aclose(completed=False)
    finally:
        await pool.close()


async def test_events_that_keep_coming_are_cut_at_the_deadline_not_as_a_stall(
    upstream: str,
) -> None:
    # An event every 0.1 s: never idle for 0.4 s, but the deadline passes at 0.8 s.
    failure, at, received = await read_until_failure(
        upstream, pace=0.1, events=100, total_s=0.8, idle_s=0.4
    )
    assert failure.kind is FailureKind.TIMEOUT
    assert 0.75 <= at < 1.5
    assert received >= 5


async def test_a_silence_after_the_first_event_is_a_stall_long_before_the_deadline(
    upstream: str,
) -> None:
    failure, at, received = await read_until_failure(
        upstream, pace=0.05, events=3, total_s=30.0, idle_s=0.3
    )
    assert failure.kind is FailureKind.STALL
    # Three events 0.05 s apart, then 0.3 s of silence.
    assert 0.4 <= at < 1.5
    assert received == 3


async def test_without_a_deadline_the_idle_watch_alone_bounds_the_stream(upstream: str) -> None:
    failure, at, _ = await read_until_failure(
        upstream, pace=0.05, events=2, total_s=None, idle_s=0.3
    )
    assert failure.kind is FailureKind.STALL
    assert at < 1.5


async def test_the_deadline_still_holds_before_the_idle_watch_begins(upstream: str) -> None:
    # The idle watch starts after the first event; no event ever comes.
    failure, at, received = await read_until_failure(
        upstream, pace=0.0, events=0, total_s=0.3, idle_s=10.0
    )
    assert failure.kind is FailureKind.TIMEOUT
    assert received == 0
    assert 0.25 <= at < 1.5
