"""The real openai client pointed at the gateway: what an app that switches base_url sees."""

from __future__ import annotations

import base64
import struct

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.redact import REDACT
from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, FREE_KEY, UPSTREAM_KEY
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


async def test_chat_answer_comes_from_the_tiers_model_with_its_upstream_id(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    raw = await client.chat.completions.with_raw_response.create(model="fast", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the upstream"
    assert completion.usage is not None and completion.usage.prompt_tokens == 11
    assert raw.headers["x-gateway-tier"] == "fast"
    assert raw.headers["x-gateway-model"] == "gpt-up"
    assert raw.headers["x-gateway-attempts"] == "1"
    assert raw.headers["x-request-id"]
    sent = upstream.requests[-1]
    assert sent.body["model"] == "upstream-model-id"
    assert sent.body["messages"] == MESSAGES


async def test_alias_and_model_name_route_like_the_tier(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    for name in ("gpt-4o-mini", "gpt-up"):
        raw = await client.chat.completions.with_raw_response.create(model=name, messages=MESSAGES)
        assert raw.headers["x-gateway-model"] == "gpt-up"
        assert upstream.requests[-1].body["model"] == "upstream-model-id"


async def test_clients_authorization_never_reaches_the_upstream(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    await client.chat.completions.create(model="fast", messages=MESSAGES)
    headers = {k.lower(): v for k, v in upstream.requests[-1].headers.items()}
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert APP_KEY not in str(headers)


async def test_upstream_calls_name_the_gateway_and_refuse_compression(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    """Answers are relayed as the upstream's own bytes, so they must come uncompressed."""
    await client.chat.completions.create(model="fast", messages=MESSAGES)
    await client.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
    for request in upstream.requests[-2:]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert headers["accept-encoding"] == "identity"
        assert headers["user-agent"].startswith("llm-gateway/")
        assert headers["content-type"] == "application/json"


async def test_gateway_only_fields_are_removed_and_others_pass_untouched(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    await client.chat.completions.create(
        model="fast",
        messages=MESSAGES,
        metadata={"feature": "support-triage", "ticket": "42"},
        extra_body={"logit_bias": {"50256": -100}, "vendor_knob": {"x": 1}},
        stop=["\n\n"],
        user="end-user-7",
    )
    body = upstream.requests[-1].body
    assert body["metadata"] == {"ticket": "42"}
    assert body["logit_bias"] == {"50256": -100}
    assert body["vendor_knob"] == {"x": 1}
    assert body["stop"] == ["\n\n"]
    assert body["user"] == "end-user-7"


async def test_streaming_chat_through_the_sdk(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    stream = await client.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the upstream"
    # The gateway asked the upstream for usage, and hid the usage chunk from this client.
    assert upstream.requests[-1].body["stream_options"] == {"include_usage": True}
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_streaming_usage_reaches_a_client_that_asks_for_it(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="fast", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_embeddings_with_the_sdks_default_base64(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    result = await client.embeddings.create(model="embed", input=["a", "b"])
    assert upstream.requests[-1].body["encoding_format"] == "base64"
    assert upstream.requests[-1].body["model"] == "upstream-embed-id"
    assert [d.embedding for d in result.data] == [[0.25, -0.5, 0.0], [0.25, -0.5, 1.0]]
    assert result.usage.prompt_tokens == 5


async def test_embeddings_as_floats(client: openai.AsyncOpenAI) -> None:
    result = await client.embeddings.create(model="embed", input="a", encoding_format="float")
    assert result.data[0].embedding == [0.25, -0.5, 0.0]


async def test_base64_is_honoured_even_when_the_upstream_sends_floats(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(garbage=True))  # this fake's "floats although base64 was asked"
    raw = await client.embeddings.with_raw_response.create(
        model="embed", input="a", encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(encoded)) == (0.25, -0.5, 0.0)


async def test_mock_provider_embeddings_float_and_base64_agree(
    client: openai.AsyncOpenAI,
) -> None:
    as_base64 = await client.embeddings.create(model="mock-model", input="same text")
    as_float = await client.embeddings.create(
        model="mock-model", input="same text", encoding_format="float"
    )
    assert as_base64.data[0].embedding == as_float.data[0].embedding
    assert len(as_float.data[0].embedding) == 8


async def test_models_lists_what_the_key_may_use(gateway: GatewayServer) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=APP_KEY) as sdk:
        ids = {m.id async for m in sdk.models.list()}
        assert {"fast", "embed", "demo", "gpt-4o-mini", "gpt-up", "mock-model"} <= ids
        model = await sdk.models.retrieve("fast")
        assert model.id == "fast" and model.object == "model"
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=FREE_KEY) as sdk:
        ids = {m.id async for m in sdk.models.list()}
        assert ids == {"demo", "mock-model"}
        with pytest.raises(openai.NotFoundError):
            await sdk.models.retrieve("fast")


async def test_mock_provider_answers_chat(client: openai.AsyncOpenAI) -> None:
    first = await client.chat.completions.create(model="demo", messages=MESSAGES)
    again = await client.chat.completions.create(model="demo", messages=MESSAGES)
    assert first.choices[0].message.content
    assert first.choices[0].message.content == again.choices[0].message.content
    stream = await client.chat.completions.create(model="demo", messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == first.choices[0].message.content


# --- each error class the SDK raises --------------------------------------------------------


async def test_wrong_key_is_authentication_error(gateway: GatewayServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key="not-a-key", max_retries=0
    ) as sdk:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(model="fast", messages=MESSAGES)
    assert caught.value.status_code == 401
    assert caught.value.type == "authentication_error"
    assert caught.value.response.headers["x-should-retry"] == "false"


async def test_a_missing_key_is_told_how_to_send_one_in_words_no_redaction_mangles(
    gateway: GatewayServer,
) -> None:
    """The logs and usage records pass every message through the redactor: the hint must come
    out of it as it went in (it once read "Authorization: [REDACTED] KEY" in the access log)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            gateway.url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES}
        ) as answer,
    ):
        assert answer.status == 401
        error = (await answer.json())["error"]
    assert error["code"] == "missing_api_key"
    assert "Authorization header using Bearer auth" in error["message"]
    assert REDACT(error["message"]) == error["message"]


async def test_unknown_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


async def test_bad_messages_is_bad_request(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="fast", messages="hello")  # type: ignore[arg-type]
    assert caught.value.param == "messages"
    assert caught.value.code == "invalid_type"


async def test_tier_outside_the_plan_is_permission_denied(gateway: GatewayServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=FREE_KEY, max_retries=0
    ) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await sdk.chat.completions.create(model="fast", messages=MESSAGES)
    assert caught.value.code == "tier_not_allowed"


async def test_upstream_rate_limit_is_rate_limit_error(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(status=429, headers={"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="fast", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.headers["x-should-retry"] == "true"


async def test_upstream_server_error_is_internal_server_error(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(status=500))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="fast", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.type == "upstream_error"


async def test_upstream_bad_request_is_relayed_as_the_clients_error(
    client: openai.AsyncOpenAI, upstream: FakeOpenAI
) -> None:
    error = {
        "message": "Invalid value for 'temperature'.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_value",
    }
    upstream.next(Behaviour(status=400, error=error))
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="fast", messages=MESSAGES, temperature=9)
    assert caught.value.param == "temperature"
    assert caught.value.code == "invalid_value"
    assert caught.value.message.endswith("Invalid value for 'temperature'.")


async def test_sdk_retries_when_the_gateway_says_it_may_help(
    gateway: GatewayServer, upstream: FakeOpenAI
) -> None:
    upstream.next(Behaviour(status=503))
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=1
    ) as sdk:
        completion = await sdk.chat.completions.create(model="fast", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from the upstream"
    assert len(upstream.requests) == 2
