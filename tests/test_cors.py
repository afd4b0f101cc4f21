"""CORS (`server.cors.allow_origins`): browser apps on another origin call the gateway.

Preflights on every API path, and the CORS headers on every kind of answer (JSON, streams,
errors the middleware writes), over plain HTTP with aiohttp; then a real headless Chromium
running a page from another loopback port that calls the gateway with `fetch`, and a page from
an origin that is not allowed, whose calls fail.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam

from gateway.config import ConfigError, parse_config
from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, merged, to_config
from tests.gateway_process import write_config
from tests.test_dashboard import CHROMIUM_TIMEOUT_S, chromium_path

ORIGIN = "http://app.example.test:3000"
OTHER = "http://evil.example.test"
API_PATHS = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/models",
    "/v1/models/demo",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/v1/completions",
    "/v1/usage",
)
# What the openai and anthropic SDKs send from a browser, as a preflight lists them.
SDK_HEADERS = (
    "authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,"
    "x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,"
    "x-stainless-runtime-version,x-stainless-timeout,x-gateway-feature,anthropic-version,"
    "anthropic-beta,x-api-key"
)
EXPOSED = (
    "x-request-id",
    "request-id",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-tokens",
    "x-gateway-model",
    "retry-after",
    "retry-after-ms",
)
CHAT_MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Hello from a browser"}
]
CHAT = {"model": "demo", "messages": CHAT_MESSAGES}


def cors_config(*origins: str, rpm: int | None = None) -> dict[str, Any]:
    """The mock behind tier `demo`, one key, CORS for `origins`."""
    return {
        "server": {
            "host": "127.0.0.1",
            "port": 0,
            "shutdown_grace_s": 1,
            "cors": {"allow_origins": list(origins)},
        },
        "providers": {"mock": {"type": "mock", "pace_ms": 5}},
        "models": {"mock-model": {"provider": "mock"}, "mock-embed": {"provider": "mock"}},
        "tiers": {"demo": ["mock-model"], "embed": ["mock-embed"]},
        "routing": {"default_tier": "demo", "retries": 0},
        "plans": {"pro": {"rpm": rpm} if rpm else {}},
        "keys": [{"name": "app", "key": APP_KEY, "plan": "pro", "feature": "chat-api"}],
    }


AUTH = {"Authorization": f"Bearer {APP_KEY}"}


def preflight_headers(origin: str, requested: str | None = SDK_HEADERS) -> dict[str, str]:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    if requested is not None:
        headers["Access-Control-Request-Headers"] = requested
    return headers


def assert_cors(headers: Any, origin: str = ORIGIN) -> None:
    """An answer a page on `origin` may read, with the headers it needs readable."""
    assert headers["Access-Control-Allow-Origin"] == origin
    exposed = {name.strip() for name in headers["Access-Control-Expose-Headers"].split(",")}
    assert set(EXPOSED) <= exposed
    if origin != "*":
        assert "Origin" in headers.getall("Vary")


def assert_no_cors(headers: Any) -> None:
    assert not [name for name in headers if name.lower().startswith("access-control-")]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --- preflights --------------------------------------------------------------------------


async def test_preflight_on_every_api_path_allows_the_sdk_headers(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(cors_config(ORIGIN))
    for path in API_PATHS:
        async with http.options(gateway.url + path, headers=preflight_headers(ORIGIN)) as answer:
            assert answer.status == 204, path
            headers = answer.headers
            assert headers["Access-Control-Allow-Origin"] == ORIGIN
            methods = {m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")}
            assert {"GET", "POST", "DELETE", "OPTIONS"} <= methods
            assert headers["Access-Control-Allow-Headers"] == SDK_HEADERS
            assert int(headers["Access-Control-Max-Age"]) == 600
            assert "Origin" in headers["Vary"]
    # A preflight naming no headers is allowed the ones the SDKs and the gateway use.
    bare = preflight_headers(ORIGIN, requested=None)
    async with http.options(gateway.url + "/v1/chat/completions", headers=bare) as answer:
        assert answer.status == 204
        allowed = {
            h.strip().lower() for h in answer.headers["Access-Control-Allow-Headers"].split(",")
        }
        assert {"authorization", "content-type", "x-api-key", "anthropic-version"} <= allowed
        assert {"x-gateway-feature", "x-stainless-os", "anthropic-beta"} <= allowed


async def test_preflight_from_an_origin_not_listed_is_refused_without_cors_headers(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(cors_config(ORIGIN))
    for path in ("/v1/chat/completions", "/v1/messages"):
        async with http.options(gateway.url + path, headers=preflight_headers(OTHER)) as answer:
            assert answer.status == 403
            assert_no_cors(answer.headers)


async def test_cors_is_off_without_allow_origins(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    raw = cors_config()
    del raw["server"]["cors"]
    gateway = await start_gateway(raw)
    url = gateway.url + "/v1/chat/completions"
    async with http.options(url, headers=preflight_headers(ORIGIN)) as answer:
        assert answer.status == 405
        assert_no_cors(answer.headers)
    async with http.post(url, json=CHAT, headers={**AUTH, "Origin": ORIGIN}) as answer:
        assert answer.status == 200
        assert_no_cors(answer.headers)
        assert "Vary" not in answer.headers


# --- answers -----------------------------------------------------------------------------


async def test_every_answer_to_an_allowed_origin_carries_the_cors_headers(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(cors_config(ORIGIN, rpm=2))
    url = gateway.url
    headers = {**AUTH, "Origin": ORIGIN}

    async with http.post(url + "/v1/chat/completions", json=CHAT, headers=headers) as answer:
        assert answer.status == 200
        assert_cors(answer.headers)
        assert answer.headers["x-ratelimit-remaining-requests"] == "1"
        await answer.json()

    streamed = {**CHAT, "stream": True}
    async with http.post(url + "/v1/chat/completions", json=streamed, headers=headers) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        assert_cors(answer.headers)
        assert (await answer.read()).endswith(b"data: [DONE]\n\n")

    async with http.get(url + "/v1/models", headers=headers) as answer:
        assert answer.status == 200
        assert_cors(answer.headers)

    # The plan's rpm (2) is spent: the 429 the admission writes is readable too.
    async with http.post(url + "/v1/chat/completions", json=CHAT, headers=headers) as answer:
        assert answer.status == 429
        assert_cors(answer.headers)
        assert answer.headers["retry-after-ms"]

    wrong_key = {"Authorization": "Bearer not-a-key", "Origin": ORIGIN}
    async with http.post(url + "/v1/chat/completions", json=CHAT, headers=wrong_key) as answer:
        assert answer.status == 401
        assert_cors(answer.headers)
        assert (await answer.json())["error"]["code"] == "invalid_api_key"

    messages = {"x-api-key": "not-a-key", "anthropic-version": "2023-06-01", "Origin": ORIGIN}
    async with http.post(url + "/v1/messages", json={}, headers=messages) as answer:
        assert answer.status == 401
        assert_cors(answer.headers)
        assert (await answer.json())["type"] == "error"  # Anthropic's dialect, still readable

    async with http.post(url + "/v1/nowhere", json=CHAT, headers=headers) as answer:
        assert answer.status == 404
        assert_cors(answer.headers)


async def test_an_allowed_origin_is_matched_whatever_its_case_and_others_get_nothing(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(cors_config("HTTP://App.Example.test:3000/", "http://b.test"))
    url = gateway.url + "/v1/chat/completions"
    async with http.post(url, json=CHAT, headers={**AUTH, "Origin": ORIGIN}) as answer:
        assert answer.status == 200
        assert_cors(answer.headers)
    async with http.post(url, json=CHAT, headers={**AUTH, "Origin": "http://b.test"}) as answer:
        assert_cors(answer.headers, "http://b.test")
    for origin in (OTHER, "http://app.example.test:3001", "null"):
        async with http.post(url, json=CHAT, headers={**AUTH, "Origin": origin}) as answer:
            assert answer.status == 200  # served: only the browser keeps it from the page
            assert "Access-Control-Allow-Origin" not in answer.headers
            assert answer.headers["Vary"] == "Origin"


async def test_star_allows_every_origin(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gateway = await start_gateway(cors_config("*"))
    url = gateway.url + "/v1/chat/completions"
    async with http.options(url, headers=preflight_headers(OTHER)) as answer:
        assert answer.status == 204
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        assert answer.headers["Access-Control-Allow-Headers"] == SDK_HEADERS
    async with http.post(url, json=CHAT, headers={**AUTH, "Origin": OTHER}) as answer:
        assert answer.status == 200
        assert_cors(answer.headers, "*")


# --- config and reload -------------------------------------------------------------------


def test_allow_origins_must_be_origins() -> None:
    raw = cors_config("https://app.example.com/path", "app.example.com", "*")
    with pytest.raises(ConfigError) as refused:
        to_config(raw)
    problems = refused.value.problems
    assert len(problems) == 1 and problems[0].startswith("server.cors.allow_origins: ")
    assert "'https://app.example.com/path'" in problems[0]
    config = parse_config("server: {cors: {allow_origins: ['https://App.example.com/']}}", env={})
    assert config.server.cors.allow_origins == ["https://app.example.com"]
    assert parse_config("", env={}).server.cors.allow_origins == []


async def test_a_reload_changes_the_allowed_origins_at_once(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    path = tmp_path / "config.yaml"
    raw = cors_config(ORIGIN)
    write_config(path, raw)
    server = GatewayServer(to_config(raw), "127.0.0.1", 0, config_path=str(path), reload_poll_s=60)
    await server.start()
    try:
        url = server.url + "/v1/models"
        assert server.reloader is not None
        async with http.get(url, headers={**AUTH, "Origin": OTHER}) as answer:
            assert "Access-Control-Allow-Origin" not in answer.headers

        write_config(
            path, merged(raw, server={**raw["server"], "cors": {"allow_origins": [OTHER]}})
        )
        assert (await server.reloader.reload("test")).ok
        async with http.get(url, headers={**AUTH, "Origin": OTHER}) as answer:
            assert_cors(answer.headers, OTHER)
        async with http.get(url, headers={**AUTH, "Origin": ORIGIN}) as answer:
            assert "Access-Control-Allow-Origin" not in answer.headers

        write_config(path, merged(raw, server={**raw["server"], "cors": {"allow_origins": []}}))
        assert (await server.reloader.reload("test")).ok
        async with http.options(url, headers=preflight_headers(OTHER)) as answer:
            assert answer.status == 405
            assert_no_cors(answer.headers)
    finally:
        await server.stop()


# --- a real browser ----------------------------------------------------------------------

PAGE = """<!doctype html>
<html><body>
<script>
const GATEWAY = __GATEWAY__;
const KEY = __KEY__;
const CHAT = __CHAT__;
const out = {};
const headers = {
  "Authorization": "Bearer " + KEY,
  "Content-Type": "application/json",
  "X-Gateway-Feature": "browser-app",
};

async function plain() {
  const answer = await fetch(GATEWAY + "/v1/chat/completions", {
    method: "POST", headers, body: JSON.stringify(CHAT),
  });
  const body = await answer.json();
  return {
    status: answer.status,
    requestId: answer.headers.get("x-request-id"),
    model: answer.headers.get("x-gateway-model"),
    remaining: answer.headers.get("x-ratelimit-remaining-requests"),
    text: body.choices[0].message.content,
  };
}

async function streamed() {
  const answer = await fetch(GATEWAY + "/v1/chat/completions", {
    method: "POST", headers, body: JSON.stringify({ ...CHAT, stream: true }),
  });
  const reader = answer.body.getReader();
  const decoder = new TextDecoder();
  let raw = "";
  let reads = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    reads += 1;
    raw += decoder.decode(value, { stream: true });
  }
  let text = "";
  let finish = null;
  for (const line of raw.split("\\n")) {
    if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
    const chunk = JSON.parse(line.slice(6));
    for (const choice of chunk.choices) {
      text += choice.delta.content || "";
      finish = choice.finish_reason || finish;
    }
  }
  return {
    status: answer.status,
    requestId: answer.headers.get("x-request-id"),
    contentType: answer.headers.get("content-type"),
    reads, text, finish, done: raw.trimEnd().endsWith("data: [DONE]"),
  };
}

async function unauthorized() {
  const answer = await fetch(GATEWAY + "/v1/chat/completions", {
    method: "POST",
    headers: { ...headers, "Authorization": "Bearer wrong-key" },
    body: JSON.stringify(CHAT),
  });
  return {
    status: answer.status,
    requestId: answer.headers.get("x-request-id"),
    code: (await answer.json()).error.code,
  };
}

async function attempt(name, run) {
  try {
    out[name] = await run();
  } catch (error) {
    out[name] = { failed: String(error) };
  }
}

(async () => {
  await attempt("plain", plain);
  await attempt("stream", streamed);
  await attempt("unauthorized", unauthorized);
  // A GET with no custom header needs no preflight: the answer itself must carry the grant.
  await attempt("simpleGet", async () => {
    const answer = await fetch(GATEWAY + "/healthz");
    return { status: answer.status };
  });
})().finally(() => {
  // Back to the page's own server (same origin): the test waits for this.
  fetch("/result", { method: "POST", body: JSON.stringify(out) });
});
</script></body></html>
"""


class PageServer:
    """The page, from its own server on another loopback port: another origin. It calls
    `gateway_url`, set once the gateway (whose config names this origin) is up, and posts
    what it found back to this server."""

    def __init__(self) -> None:
        self.gateway_url = ""
        self.origin = ""
        self._results: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_post("/result", self._result)
        self._runner = web.AppRunner(app, access_log=None)

    async def _index(self, _: web.Request) -> web.Response:
        page = (
            PAGE.replace("__GATEWAY__", json.dumps(self.gateway_url))
            .replace("__KEY__", json.dumps(APP_KEY))
            .replace("__CHAT__", json.dumps(CHAT))
        )
        return web.Response(text=page, content_type="text/html")

    async def _result(self, request: web.Request) -> web.Response:
        self._results.put_nowait(json.loads(await request.text()))
        return web.Response(status=204)

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.origin = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def result(self, profile: Path) -> dict[str, Any]:
        """Open the page in headless Chromium; what it posts back once its calls are done.
        The browser is stopped then (it would stay open on the page)."""
        proc = await asyncio.create_subprocess_exec(
            chromium_path(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            self.origin + "/",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            return await asyncio.wait_for(self._results.get(), CHROMIUM_TIMEOUT_S)
        except TimeoutError:
            pytest.fail(f"the page at {self.origin} posted no result in {CHROMIUM_TIMEOUT_S} s")
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.communicate()


@pytest.fixture
async def pages() -> AsyncIterator[tuple[PageServer, PageServer]]:
    allowed, refused = PageServer(), PageServer()
    await allowed.start()
    await refused.start()
    yield allowed, refused
    await allowed.stop()
    await refused.stop()


async def test_a_page_on_another_origin_calls_the_gateway_with_fetch(
    start_gateway: StartGateway, pages: tuple[PageServer, PageServer], tmp_path: Path
) -> None:
    allowed, refused = pages
    gateway = await start_gateway(cors_config(allowed.origin, rpm=100))
    allowed.gateway_url = refused.gateway_url = gateway.url
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        expected = await client.chat.completions.create(model="demo", messages=CHAT_MESSAGES)
    expected_text = expected.choices[0].message.content
    assert expected_text

    result = await allowed.result(tmp_path / "allowed")
    plain, stream = result["plain"], result["stream"]
    assert plain["status"] == 200 and plain["text"] == expected_text, result
    assert plain["requestId"].startswith("req_") and plain["model"] == "mock-model"
    assert plain["remaining"] == "98"
    assert stream["status"] == 200 and stream["contentType"].startswith("text/event-stream")
    assert stream["text"] == expected_text and stream["finish"] == "stop" and stream["done"]
    assert stream["reads"] >= 2  # read as it came, with the ReadableStream reader
    assert stream["requestId"].startswith("req_") and stream["requestId"] != plain["requestId"]
    unauthorized = result["unauthorized"]
    assert unauthorized["status"] == 401 and unauthorized["code"] == "invalid_api_key"
    assert unauthorized["requestId"].startswith("req_")
    assert result["simpleGet"] == {"status": 200}

    blocked = await refused.result(tmp_path / "refused")
    for name in ("plain", "stream", "unauthorized", "simpleGet"):
        assert "TypeError" in blocked[name].get("failed", ""), (name, blocked)
