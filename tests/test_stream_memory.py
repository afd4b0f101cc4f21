"""What a stream holds while it is open: one gateway process serves thousands at once
(bench/streams_memory_bench.py), so every object kept per open stream counts."""

from __future__ import annotations

import asyncio
import gc
from typing import Any, TypeVar, cast

import aiohttp
from aiohttp import web

from gateway.http.slim import LeanQueue
from gateway.http.stream import _CHAT_CLIENTS, ClientStream, RelayedStream, _KeepAlives
from gateway.pipeline.admission import ModelGate
from gateway.pipeline.attempts import AttemptLoop
from gateway.pipeline.context import RequestState
from gateway.providers.http import HTTPEventStream
from gateway.server.protocol import GatewayRequestHandler
from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

T = TypeVar("T")
AUTH = {"Authorization": f"Bearer {APP_KEY}"}
STREAM_BODY: dict[str, Any] = {
    "model": "fast",
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


def live(kind: type[T]) -> list[T]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, kind)]


async def test_an_open_stream_keeps_no_keepalive_state_no_client_of_its_own_and_no_dicts(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(stall_after_events=1))  # open, silent, after its first event
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        first = await response.content.readuntil(b"\n\n")
        assert first.startswith(b"data: ")
        # The first event is out: the keep-alive comments' state (their timer, the event that
        # wakes them) is no longer needed, and is not kept for the rest of the stream.
        assert live(_KeepAlives) == []
        # Chat's ClientStream is stateless: shared by every stream, not made for each.
        shared = list(_CHAT_CLIENTS.values())
        assert all(
            any(o is c for c in shared) for o in live(ClientStream) if type(o) is ClientStream
        )
        # The objects made per open stream and per connection carry no per-instance dict.
        for kind in (HTTPEventStream, GatewayRequestHandler, ModelGate):
            objects = live(kind)
            assert objects, kind
            assert all(not hasattr(o, "__dict__") for o in objects), kind


def streaming_handler() -> GatewayRequestHandler:
    """The connection whose request is being answered (the test's stream)."""
    busy = [h for h in live(GatewayRequestHandler) if h._current_request is not None]
    assert len(busy) == 1, busy
    return busy[0]


async def test_an_open_stream_keeps_no_response_headers_no_idle_timer_and_no_deques(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    """What aiohttp's server side would keep per open stream and the gateway lets go once
    the stream has begun. The deques are swapped in aiohttp's private attributes
    (gateway.http.slim): if an aiohttp upgrade renames them, this fails."""
    upstream.next(Behaviour(stall_after_events=1))
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        # The client has every header: they were written before the mapping was let go.
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["x-request-id"].startswith("req_")
        assert response.headers["x-gateway-model"]
        assert (await response.content.readuntil(b"\n\n")).startswith(b"data: ")
        handler = streaming_handler()
        request = handler._current_request
        assert request is not None
        # The gateway's answer (the fake upstream in this process has one too).
        streams = [o for o in live(web.StreamResponse) if o._req is request]
        assert len(streams) == 1 and streams[0].prepared
        assert len(streams[0].headers) == 0
        assert handler._keepalive_handle is None  # no idle timer while an answer is written
        queues: list[object] = [handler._messages, request.content._buffer]
        assert [type(q) for q in queues] == [LeanQueue, LeanQueue]


async def test_a_connection_serves_again_after_a_stream_with_its_idle_timer_rearmed(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    """The idle timer a stream cancels comes back when the stream ends, and the connection
    (its requests now queued in a LeanQueue) goes on serving: stream, stream, plain chat."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as http:
        for body in (STREAM_BODY, STREAM_BODY, {**STREAM_BODY, "stream": False}):
            url = gateway.url + "/v1/chat/completions"
            async with http.post(url, json=body, headers=AUTH) as response:
                assert response.status == 200
                text = await response.text()
                assert "data: [DONE]" in text if body["stream"] else '"choices"' in text
        handlers = live(GatewayRequestHandler)
        assert len(handlers) == 1  # one connection served all three
        assert handlers[0]._request_count == 3
        assert handlers[0]._keepalive_handle is not None  # idle again: watched again


def awaiting_chain(task: asyncio.Task[Any]) -> list[tuple[str, dict[str, Any]]]:
    """(function name, locals) of each coroutine a task is suspended in, outermost first."""
    chain = []
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_frame"):
        if coro.cr_frame is not None:
            chain.append((coro.cr_code.co_name, dict(coro.cr_frame.f_locals)))
        coro = coro.cr_await
    return chain


async def test_an_open_stream_is_two_coroutines_deep_and_holds_no_start_closure(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    """From its first event on, a stream runs in `RelayedStream.relay` alone (no coroutine
    layer under it for writing events, none left from opening it), under aiohttp's request
    task and the gateway's outermost layer only: neither the handler's frame nor aiohttp's
    routing is kept (nor an aiohttp middleware's, which the gateway has none of). The
    closure that opened it is gone."""
    upstream.next(Behaviour(stall_after_events=1))
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=STREAM_BODY, headers=AUTH) as response,
    ):
        assert (await response.content.readuntil(b"\n\n")).startswith(b"data: ")
        chains = [awaiting_chain(t) for t in asyncio.all_tasks()]
        relaying = [c for c in chains if any(name == "relay" for name, _ in c)]
        assert len(relaying) == 1
        names = [name for name, _ in relaying[0]]
        assert names[: names.index("relay")] == ["_handle_request", "middleware"]
        after = names[names.index("relay") + 1 :]
        assert "_pump" not in after and "_open" not in after, names
        relay_locals = dict(relaying[0])["relay"]
        assert "start" not in relay_locals and "opened" not in relay_locals
        # The events already written are not kept while the next ones are awaited.
        assert relay_locals["out"] == [] and relay_locals["event"] == b""
        assert relay_locals["events"] is None
        streams = [o for o in live(RelayedStream) if o.prepared]
        assert len(streams) == 1 and streams[0]._relay_with is None


async def test_open_streams_share_their_give_backs_and_their_provider_lookup(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    """What every request's lease holds (its runtime, its process slot, its tier's in-flight
    gauge) is given back by functions made once, not by closures made for each request, and
    the attempt loop's provider lookup is the runtime's: two open streams hold the same."""
    upstream.next(Behaviour(stall_after_events=1))
    upstream.next(Behaviour(stall_after_events=1))
    url = gateway.url + "/v1/chat/completions"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=STREAM_BODY, headers=AUTH) as first,
        http.post(url, json=STREAM_BODY, headers=AUTH) as second,
    ):
        for response in (first, second):
            assert (await response.content.readuntil(b"\n\n")).startswith(b"data: ")
        states = [s for s in live(RequestState) if s.answer_started]
        assert len(states) == 2
        one, other = (s.lease._give_backs for s in states)
        assert len(one) == len(other) >= 3
        assert all(a is b for a, b in zip(one, other, strict=True))
        loops = [s.attempt_loop for s in states]
        assert all(isinstance(loop, AttemptLoop) for loop in loops)
        assert cast(AttemptLoop, loops[0]).provider_of is cast(AttemptLoop, loops[1]).provider_of
