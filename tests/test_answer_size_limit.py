"""`server.max_answer_mb` bounds what is read of a whole upstream answer: past it the attempt
fails as a bad response (502 `upstream_bad_response` for a one-model chain) instead of holding
an answer of any size in memory, and the connection is not reused. Streams are never held
whole, so the same answer streamed goes through."""

from __future__ import annotations

import aiohttp

from tests.conftest import APP_KEY, StartGateway, base_config
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

AUTH = {"Authorization": f"Bearer {APP_KEY}"}
BIG = ["x" * 1024] * 1200  # about 1.2 MB of content


async def test_an_answer_past_max_answer_mb_is_a_bad_response(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = base_config(upstream.url)
    raw["server"]["max_answer_mb"] = 1
    gateway = await start_gateway(raw)
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession(headers=AUTH) as http:
        upstream.next(Behaviour(words=BIG))
        async with http.post(gateway.url + "/v1/chat/completions", json=body) as answer:
            assert answer.status == 502
            error = (await answer.json())["error"]
            assert error["code"] == "upstream_bad_response"
            assert "max_answer_mb" in error["message"]
        upstream.next(Behaviour(words=["small"]))
        async with http.post(gateway.url + "/v1/chat/completions", json=body) as answer:
            assert answer.status == 200  # the next answer is read as usual
        upstream.next(Behaviour(words=BIG))
        streamed = {**body, "stream": True}
        async with http.post(gateway.url + "/v1/chat/completions", json=streamed) as answer:
            assert answer.status == 200
            raw_stream = await answer.read()
    assert len(raw_stream) > 1024 * 1024 and raw_stream.endswith(b"data: [DONE]\n\n")
