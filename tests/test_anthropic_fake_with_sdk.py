"""The real `anthropic` client against the fake Anthropic upstream: proves the fake speaks the
wire format the SDK expects, so that tests of the gateway's translation against the fake mean
something about the real API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text, tool_use

API_KEY = "sk-ant-test"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic(API_KEY)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def sdk(fake: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=fake.url, api_key=API_KEY, max_retries=0, timeout=10
    ) as client:
        yield client


async def test_sdk_parses_a_plain_message(
    fake: FakeAnthropic, sdk: anthropic.AsyncAnthropic
) -> None:
    fake.next(
        Reply(
            content=[text("Hi there")], input_tokens=20, output_tokens=3, cache_read_input_tokens=5
        )
    )
    message = await sdk.messages.create(
        model="claude-test",
        max_tokens=50,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hi there"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 20
    assert message.usage.cache_read_input_tokens == 5
    assert message.usage.output_tokens == 3
    sent = fake.requests[-1]
    # This SDK sends the key as a bearer token; the gateway sends it as `x-api-key`.
    assert API_KEY in (sent.headers.get("x-api-key"), sent.headers.get("Authorization", "")[7:])
    assert sent.headers["anthropic-version"]
    assert sent.body["system"] == "Be brief."


async def test_sdk_stream_of_text_accumulates_to_the_whole_message(
    fake: FakeAnthropic, sdk: anthropic.AsyncAnthropic
) -> None:
    fake.next(Reply(content=[text("Streaming works fine")], output_tokens=9))
    async with sdk.messages.stream(
        model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        pieces = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == "Streaming works fine"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 9
    assert final.usage.input_tokens == 12


async def test_sdk_raw_stream_has_every_event_type_in_order(
    fake: FakeAnthropic, sdk: anthropic.AsyncAnthropic
) -> None:
    fake.next(Reply(content=[text("ab")]))
    stream = await sdk.messages.create(
        model="claude-test",
        max_tokens=50,
        stream=True,
        messages=[{"role": "user", "content": "Hi"}],
    )
    kinds = [event.type async for event in stream]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]  # the SDK drops `ping` itself


async def test_sdk_stream_with_parallel_tool_uses_rebuilds_their_inputs(
    fake: FakeAnthropic, sdk: anthropic.AsyncAnthropic
) -> None:
    fake.next(
        Reply(
            content=[
                text("Checking."),
                tool_use("toolu_01", "get_weather", {"city": "Paris"}),
                tool_use("toolu_02", "get_weather", {"city": "Tokyo, Japan"}),
            ],
            stop_reason="tool_use",
        )
    )
    async with sdk.messages.stream(
        model="claude-test",
        max_tokens=50,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "Weather in Paris and Tokyo?"}],
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    uses = [block for block in final.content if block.type == "tool_use"]
    assert [(u.id, u.name, u.input) for u in uses] == [
        ("toolu_01", "get_weather", {"city": "Paris"}),
        ("toolu_02", "get_weather", {"city": "Tokyo, Japan"}),
    ]


async def test_sdk_sends_tool_results_the_fake_accepts(
    fake: FakeAnthropic, sdk: anthropic.AsyncAnthropic
) -> None:
    message = await sdk.messages.create(
        model="claude-test",
        max_tokens=50,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_9",
                        "name": "get_weather",
                        "input": {"city": "Oslo"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "-3C"}],
            },
        ],
    )
    assert message.content[0].type == "text"


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, anthropic.BadRequestError),
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
        (529, anthropic.OverloadedError),
    ],
)
async def test_sdk_raises_its_own_exception_for_each_error_status(
    fake: FakeAnthropic,
    sdk: anthropic.AsyncAnthropic,
    status: int,
    exception: type[anthropic.APIStatusError],
) -> None:
    fake.next(Reply(status=status, error_message="scripted failure"))
    with pytest.raises(exception) as info:
        await sdk.messages.create(
            model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["message"] == "scripted failure"


async def test_fake_refuses_what_the_real_api_refuses(
    fake: FakeAnthropic, sdk: anthropic.AsyncAnthropic
) -> None:
    with pytest.raises(anthropic.BadRequestError, match="alternate"):
        await sdk.messages.create(
            model="claude-test",
            max_tokens=50,
            messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        )
    async with anthropic.AsyncAnthropic(
        base_url=fake.url, api_key="wrong", max_retries=0
    ) as wrong_key:
        with pytest.raises(anthropic.AuthenticationError):
            await wrong_key.messages.create(
                model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "a"}]
            )


async def test_sdk_raises_on_an_error_event_mid_stream(
    fake: FakeAnthropic, sdk: anthropic.AsyncAnthropic
) -> None:
    fake.next(Reply(content=[text("partial answer here")], error_event_after=3))
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async with sdk.messages.stream(
            model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            async for _ in stream:
                pass


async def test_scenario_is_chosen_by_the_last_user_message(
    fake: FakeAnthropic, sdk: anthropic.AsyncAnthropic
) -> None:
    fake.script("short", Reply(content=[text("scripted")], stop_reason="max_tokens"))
    message = await sdk.messages.create(
        model="claude-test",
        max_tokens=50,
        messages=[{"role": "user", "content": "please fake:short"}],
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "scripted"
    assert message.stop_reason == "max_tokens"
