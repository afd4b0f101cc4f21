"""A whole answer is bounded by its model's `total` from the POST to the last byte of its body,
not only until its headers arrive."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.providers.base import TimeoutConfig, UpstreamCall
from gateway.providers.openai import OpenAIProvider, OpenAIProviderConfig
from tests.conftest import free_port


def _call(total: float) -> UpstreamCall:
    return UpstreamCall("m", TimeoutConfig(connect=1, first_token=1, total=total), {}, "req_1")


async def test_a_body_that_stalls_after_its_headers_is_cut_at_total() -> None:
    """aiohttp's own total covered reading the body too; `fetch_whole` must as well."""

    release = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"choices": [')
        await release.wait()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", stall)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    provider = OpenAIProvider(
        "up", OpenAIProviderConfig(type="openai", base_url=f"http://127.0.0.1:{port}/v1")
    )
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamFailure) as caught:
            await provider.chat(_call(0.3))
        assert caught.value.kind is FailureKind.TIMEOUT
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        release.set()
        await provider.aclose()
        await runner.cleanup()
