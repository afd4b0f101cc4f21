"""What a stream holds while it is open: one gateway process serves thousands at once
(bench/streams_memory_bench.py), so every object kept per open stream counts."""

from __future__ import annotations

import gc
from typing import Any

import aiohttp

from gateway.http.stream import _CHAT_CLIENTS, ClientStream, _KeepAlives
from gateway.pipeline.admission import ModelGate
from gateway.providers.http import HTTPEventStream
from gateway.server.protocol import GatewayRequestHandler
from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

AUTH = {"Authorization": f"Bearer {APP_KEY}"}
STREAM_BODY: dict[str, Any] = {
    "model": "fast",
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}


def live(kind: type) -> list[object]:
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
