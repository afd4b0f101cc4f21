"""Bad input and upstream faults: every error OpenAI-shaped, with the right status and headers."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config, free_port, merged
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

AUTH = {"Authorization": f"Bearer {APP_KEY}"}
CHAT: dict[str, Any] = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}


async def post(
    gateway: GatewayServer,
    data: bytes | None = None,
    json: Any = None,
    headers: dict[str, str] | None = None,
    path: str = "/v1/chat/completions",
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gateway.url + path, data=data, json=json, headers={**AUTH, **(headers or {})}
        ) as response,
    ):
        return response.status, await response.json(), response.headers


def assert_openai_error(body: dict[str, Any], error_type: str, code: str | None = None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["type"] == error_type
    if code is not None:
        assert body["error"]["code"] == code


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        (b"{not json", None, None),
        (b"", None, None),
        (b"[1, 2]", None, "invalid_type"),
        (b'"a string"', None, "invalid_type"),
        (b'{"model": "fast"}', "messages", "missing_required_parameter"),
        (b'{"model": "fast", "messages": "hi"}', "messages", "invalid_type"),
        (b'{"model": "fast", "messages": []}', "messages", "empty_array"),
        (b'{"model": "fast", "messages": ["hi"]}', "messages[0]", "invalid_type"),
        (
            b'{"model": "fast", "messages": [{"content": "x"}]}',
            "messages[0].role",
            "missing_required_parameter",
        ),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "model", "invalid_type"),
        (
            b'{"model": "fast", "stream": "yes", "messages": [{"role": "user"}]}',
            "stream",
            "invalid_type",
        ),
        (
            b'{"model": "fast", "max_tokens": "9", "messages": [{"role": "user"}]}',
            "max_tokens",
            "invalid_type",
        ),
        (
            b'{"model": "fast", "stream_options": {"include_usage": true},'
            b' "messages": [{"role": "user"}]}',
            "stream_options",
            None,
        ),
    ],
)
async def test_bad_chat_bodies_are_400(
    gateway: GatewayServer,
    upstream: FakeOpenAI,
    payload: bytes,
    param: str | None,
    code: str | None,
) -> None:
    status, body, headers = await post(
        gateway, data=payload, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert_openai_error(body, "invalid_request_error", code)
    assert body["error"]["param"] == param
    assert headers["x-should-retry"] == "false"
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"model": "embed"}, "input"),
        ({"input": "x"}, "model"),
        ({"model": "embed", "input": ""}, "input"),
        ({"model": "embed", "input": []}, "input"),
        ({"model": "embed", "input": [1, "a"]}, "input"),
        ({"model": "embed", "input": {"a": 1}}, "input"),
        ({"model": "embed", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "embed", "input": "x", "dimensions": 0}, "dimensions"),
    ],
)
async def test_bad_embedding_bodies_are_400(
    gateway: GatewayServer, payload: dict[str, Any], param: str
) -> None:
    status, body, _ = await post(gateway, json=payload, path="/v1/embeddings")
    assert status == 400
    assert_openai_error(body, "invalid_request_error")
    assert body["error"]["param"] == param


async def test_unknown_model_is_404_model_not_found(gateway: GatewayServer) -> None:
    status, body, headers = await post(gateway, json={**CHAT, "model": "nope"})
    assert status == 404
    assert_openai_error(body, "invalid_request_error", "model_not_found")
    assert headers["x-gateway-model"] == ""


async def test_missing_model_uses_the_default_tier(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    status, _, headers = await post(gateway, json={"messages": CHAT["messages"]})
    assert status == 200
    assert headers["x-gateway-tier"] == "fast"
    assert upstream.requests[-1].body["model"] == "upstream-model-id"


async def test_missing_model_without_a_default_tier_is_400(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(merged(base_config(upstream.url), routing={"default_tier": None}))
    status, body, _ = await post(gateway, json={"messages": CHAT["messages"]})
    assert status == 400
    assert body["error"]["param"] == "model"


async def test_body_over_the_limit_is_413_by_content_length(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(merged(base_config(upstream.url), server={"max_body_mb": 0.01}))
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 20_000}]}
    status, body, _ = await post(gateway, json=big)
    assert status == 413
    assert_openai_error(body, "request_too_large", "request_too_large")
    assert upstream.requests == []


async def test_chunked_body_over_the_limit_is_refused_without_reading_the_rest(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(merged(base_config(upstream.url), server={"max_body_mb": 0.01}))
    sent = 0

    async def endless() -> Any:
        nonlocal sent
        yield b'{"model": "fast", "messages": [{"role": "user", "content": "'
        for _ in range(10_000):  # up to 640 MB if the gateway kept reading
            sent += 65536
            yield b"x" * 65536
            await asyncio.sleep(0)

    async with aiohttp.ClientSession() as http:
        try:
            async with http.post(
                gateway.url + "/v1/chat/completions", data=endless(), headers=AUTH
            ) as response:
                assert response.status == 413
                assert (await response.json())["error"]["type"] == "request_too_large"
        except aiohttp.ClientError:
            pass  # the gateway may close before the client reads the answer: also a refusal
    assert sent < 50 * 65536
    assert upstream.requests == []


async def test_every_response_carries_the_request_id_and_route_headers(
    gateway: GatewayServer,
) -> None:
    async with aiohttp.ClientSession() as http:
        for method, path, body in [
            ("POST", "/v1/chat/completions", CHAT),
            ("POST", "/v1/chat/completions", {"model": "x"}),
            ("GET", "/v1/models", None),
            ("GET", "/v1/nothing-here", None),
            ("GET", "/healthz", None),
        ]:
            async with http.request(
                method, gateway.url + path, json=body, headers={**AUTH, "x-request-id": "abc-123"}
            ) as response:
                assert response.headers["x-request-id"] == "abc-123"
                assert "x-gateway-tier" in response.headers
                assert "x-gateway-model" in response.headers
                await response.read()
        async with http.post(
            gateway.url + "/v1/chat/completions", json=CHAT, headers=AUTH
        ) as response:
            assert response.headers["x-request-id"].startswith("req_")


async def test_unknown_path_is_an_openai_shaped_404(gateway: GatewayServer) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(gateway.url + "/v1/nothing-here", headers=AUTH) as response,
    ):
        assert response.status == 404
        assert_openai_error(await response.json(), "invalid_request_error")
    async with (
        aiohttp.ClientSession() as http,
        http.get(gateway.url + "/v1/chat/completions", headers=AUTH) as response,
    ):
        assert response.status == 405
        assert_openai_error(await response.json(), "invalid_request_error")


async def test_upstream_headers_never_reach_the_client(gateway: GatewayServer) -> None:
    status, _, headers = await post(gateway, json=CHAT)
    assert status == 200
    assert headers.get("Server") != "fake-upstream/1.0"
    assert "Set-Cookie" not in headers
    assert "openai-organization" not in headers


# --- upstream faults ------------------------------------------------------------------------


async def test_upstream_refusing_connections_is_502(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(base_config(f"http://127.0.0.1:{free_port()}/v1"))
    status, body, headers = await post(gateway, json=CHAT)
    assert status == 502
    assert_openai_error(body, "upstream_error", "upstream_connect_error")
    assert headers["x-should-retry"] == "true"


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_reset_before_answering_is_502(
    gateway: GatewayServer, upstream: FakeOpenAI, stream: bool
) -> None:
    upstream.next(Behaviour(reset_before_headers=True))
    status, body, _ = await post(gateway, json={**CHAT, "stream": stream})
    assert status == 502
    assert_openai_error(body, "upstream_error", "upstream_connection_reset")


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_garbage_is_502(
    gateway: GatewayServer, upstream: FakeOpenAI, stream: bool
) -> None:
    upstream.next(Behaviour(garbage=True))
    status, body, _ = await post(gateway, json={**CHAT, "stream": stream})
    assert status == 502
    assert_openai_error(body, "upstream_error", "upstream_bad_response")


async def test_upstream_too_slow_is_504(upstream: FakeOpenAI, start_gateway: StartGateway) -> None:
    raw = base_config(upstream.url)
    raw["models"]["gpt-up"]["timeout"] = {"connect": 1, "first_token": 0.1, "total": 0.5}
    gateway = await start_gateway(raw)
    upstream.next(Behaviour(delay_s=3))
    status, body, headers = await post(gateway, json=CHAT)
    assert status == 504
    assert_openai_error(body, "upstream_timeout", "upstream_timeout")
    assert headers["x-should-retry"] == "true"


async def test_a_whole_answer_slower_than_first_token_but_within_total_is_served(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    """A non-streamed answer arrives all at once when the upstream has generated all of it:
    only `total` bounds it, so a long completion is not cut at `first_token`."""
    raw = base_config(upstream.url)
    raw["models"]["gpt-up"]["timeout"] = {"connect": 1, "first_token": 0.2, "total": 5}
    gateway = await start_gateway(raw)
    upstream.next(Behaviour(delay_s=0.6))
    status, body, _ = await post(gateway, json=CHAT)
    assert status == 200
    assert body["choices"][0]["message"]["content"]


async def test_upstream_auth_failure_is_not_the_clients_401(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(status=401))
    status, body, _ = await post(gateway, json=CHAT)
    assert status == 502
    assert body["error"]["code"] == "upstream_rejected"


async def test_upstream_context_length_error_is_relayed_with_its_code(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(
        Behaviour(
            status=400,
            error={
                "message": "This model's maximum context length is 8192 tokens.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": None,
            },
        )
    )
    status, body, _ = await post(gateway, json=CHAT)
    assert status == 400
    assert body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["param"] == "messages"


# --- auth -----------------------------------------------------------------------------------


async def test_x_api_key_header_authenticates(gateway: GatewayServer) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gateway.url + "/v1/chat/completions", json=CHAT, headers={"x-api-key": APP_KEY}
        ) as response,
    ):
        assert response.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": APP_KEY},
        {"x-api-key": "wrong"},
        {"Authorization": "Basic " + APP_KEY},
    ],
)
async def test_missing_or_wrong_keys_are_401(
    gateway: GatewayServer, upstream: FakeOpenAI, headers: dict[str, str]
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=headers) as response,
    ):
        assert response.status == 401
        assert_openai_error(await response.json(), "authentication_error")
    assert upstream.requests == []


async def test_key_by_sha256_digest(upstream: FakeOpenAI, start_gateway: StartGateway) -> None:
    import hashlib

    raw = base_config(upstream.url)
    raw["keys"] = [
        {"name": "ops", "key_sha256": hashlib.sha256(b"hunter2").hexdigest(), "admin": True}
    ]
    gateway = await start_gateway(raw)
    async with aiohttp.ClientSession() as http:
        for key, expected in (("hunter2", 200), ("hunter3", 401)):
            async with http.post(
                gateway.url + "/v1/chat/completions",
                json=CHAT,
                headers={"Authorization": f"Bearer {key}"},
            ) as response:
                assert response.status == expected


async def test_no_keys_section_turns_auth_off_with_a_warning(
    upstream: FakeOpenAI, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    raw = base_config(upstream.url)
    del raw["keys"]
    gateway = await start_gateway(raw)
    assert any("authentication is OFF" in r.getMessage() for r in caplog.records)
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway.url + "/v1/chat/completions", json=CHAT) as response,
    ):
        assert response.status == 200


async def test_health_and_readiness(gateway: GatewayServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/healthz") as response:
            assert response.status == 200
        async with http.get(gateway.url + "/readyz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ready"


async def test_metrics_on_their_own_port_when_configured(
    upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    gateway = await start_gateway(merged(base_config(upstream.url), server={"metrics_port": 0}))
    assert gateway.metrics_port not in (None, 0, gateway.port)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics") as response:
            assert response.status == 200
            assert "gateway_requests_total" in await response.text()
        async with http.get(gateway.url + "/metrics") as response:
            assert response.status == 404


async def test_the_routers_404_and_405_are_the_gateways_errors_with_its_headers(
    gateway: GatewayServer,
) -> None:
    """Routing runs inside the gateway's outermost layer (gateway.http.middleware wraps the
    app's handler, routing included): an unknown path and a wrong method are answered in
    OpenAI's envelope, with a request id, and logged and counted like any answer."""
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/v1/nowhere") as answer:
            assert answer.status == 404
            assert answer.headers["x-request-id"].startswith("req_")
            body = await answer.json()
            assert_openai_error(body, "invalid_request_error")
            assert body["error"]["message"] == "Invalid URL (GET /v1/nowhere)."
        async with http.get(gateway.url + "/v1/chat/completions") as answer:
            assert answer.status == 405
            assert answer.headers["x-request-id"].startswith("req_")
            body = await answer.json()
            assert "GET is not allowed on /v1/chat/completions" in body["error"]["message"]
