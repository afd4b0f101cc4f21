"""The two servers the benchmark measures the gateway against, each run in its own process:

    python bench/_servers.py upstream --port P [--pace-ms MS] [--hold]
    python bench/_servers.py relay --port P --upstream-port U

`upstream` is a fast fake OpenAI API: fixed answers, no sleeps, so that what is measured is the
relay in front of it (`--pace-ms` spaces a stream's events, so that streams stay open as real
ones do, for the memory benchmark; with `--hold`, `POST /bench/hold` keeps every stream open
after its first event until `POST /bench/release`, and `GET /bench/held` counts them, for the
open-streams benchmark). `relay` is the floor for any Python proxy: one pooled aiohttp session,
the body forwarded untouched, the answer copied back (streams chunk by chunk).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
from _common import HOST, run
from aiohttp import web

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM_URL = web.AppKey("upstream_url", str)
PACE_S = web.AppKey("pace_s", float)


class Hold:
    """Streams held open after their first event, from `POST /bench/hold` to `POST
    /bench/release`: how many wait now, and the event that lets them (and every later stream)
    go on. Released at start, so that a warm-up runs through."""

    def __init__(self) -> None:
        self.held = 0
        self.released = asyncio.Event()
        self.released.set()


HOLD = web.AppKey("hold", Hold)


# --- the fake upstream -------------------------------------------------------------------------

_CREATED = int(time.time())
_USAGE = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}

CHAT_COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": _CREATED,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there, how can I help?"},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": _USAGE,
    }
)


def chunk(delta: dict[str, str], finish: str | None = None, usage: bool = False) -> bytes:
    event: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        event["usage"] = _USAGE
    return b"data: " + orjson.dumps(event) + b"\n\n"


# Five chunks then [DONE]. The last chunk carries usage (as several compatible servers send it),
# so the gateway does its real usage-reading work while every target receives the same bytes.
STREAM_EVENTS = (
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hello"}),
    chunk({"content": " there,"}),
    chunk({"content": " how can I help?"}),
    chunk({}, finish="stop", usage=True),
    b"data: [DONE]\n\n",
)


async def fake_chat(request: web.Request) -> web.StreamResponse:
    """A fixed chat.completion, or for `stream: true` a fixed SSE stream written at once."""
    body = orjson.loads(await request.read())
    if not (isinstance(body, dict) and body.get("stream") is True):
        return web.Response(body=CHAT_COMPLETION, content_type="application/json")
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    pace_s = request.app[PACE_S]
    hold = request.app.get(HOLD)
    for number, event in enumerate(STREAM_EVENTS):
        # One write per event, like a real server producing tokens, by default without the
        # waiting.
        if number == 1 and hold is not None and not hold.released.is_set():
            hold.held += 1
            try:
                await hold.released.wait()
            finally:
                hold.held -= 1
        if pace_s and number:
            await asyncio.sleep(pace_s)
        await response.write(event)
    await response.write_eof()
    return response


async def held(request: web.Request) -> web.Response:
    return web.Response(text=str(request.app[HOLD].held))


async def arm(request: web.Request) -> web.Response:
    request.app[HOLD].released.clear()
    return web.Response(text="holding")


async def release(request: web.Request) -> web.Response:
    request.app[HOLD].released.set()
    return web.Response(text="released")


def upstream_app(pace_s: float = 0.0, hold: bool = False) -> web.Application:
    app = web.Application()
    app[PACE_S] = pace_s
    app.router.add_post("/v1/chat/completions", fake_chat)
    if hold:
        app[HOLD] = Hold()
        app.router.add_get("/bench/held", held)
        app.router.add_post("/bench/hold", arm)
        app.router.add_post("/bench/release", release)
    return app


# --- the bare relay ----------------------------------------------------------------------------


async def relay_chat(request: web.Request) -> web.StreamResponse:
    """Forward the body untouched; copy the answer back. The content type of the upstream's
    answer, not the request body, decides whether to stream, so the relay never parses JSON."""
    body = await request.read()
    session = request.app[SESSION]
    # The upstream's path is the request's own, so one relay serves every upstream route.
    async with session.post(
        request.app[UPSTREAM_URL] + request.path,
        data=body,
        headers={"Content-Type": "application/json"},
    ) as upstream:
        if upstream.content_type != "text/event-stream":
            return web.Response(
                body=await upstream.read(),
                status=upstream.status,
                content_type=upstream.content_type,
            )
        response = web.StreamResponse(status=upstream.status, headers=SSE_HEADERS)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def relay_app(upstream_port: int) -> web.Application:
    app = web.Application()
    app[UPSTREAM_URL] = f"http://{HOST}:{upstream_port}"

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        # Pool settings like the gateway's provider session, so only the work per request differs.
        connector = aiohttp.TCPConnector(limit=1000, limit_per_host=1000, keepalive_timeout=30)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        ) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{path:.*}", relay_chat)
    return app


# --- running either ------------------------------------------------------------------------------


async def serve(app: web.Application, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then close cleanly (the relay's session included)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["upstream", "relay"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int)
    parser.add_argument("--pace-ms", type=float, default=0.0, help="upstream: between events")
    parser.add_argument(
        "--hold", action="store_true", help="upstream: hold streams after their first event"
    )
    args = parser.parse_args()
    if args.role == "upstream":
        app = upstream_app(args.pace_ms / 1000, args.hold)
    elif args.upstream_port is None:
        parser.error("relay needs --upstream-port")
    else:
        app = relay_app(args.upstream_port)
    run(serve(app, args.port))


if __name__ == "__main__":
    main()
