"""The `anthropic` provider: OpenAI Chat Completions in, Anthropic Messages upstream, OpenAI's
exact wire format back. Pure translation tests first, then the provider against the fake
Anthropic upstream, with every answer checked by the openai SDK's own types."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pydantic
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.config import ModelConfig
from gateway.errors import UpstreamFailure
from gateway.providers.anthropic import AnthropicProvider, AnthropicProviderConfig
from gateway.providers.anthropic_request import JSON_OBJECT_INSTRUCTION, translate_request
from gateway.providers.anthropic_response import openai_usage, translate_response
from gateway.providers.anthropic_stream import StreamTranslator
from gateway.providers.base import EventStream, TimeoutConfig, UpstreamCall, Usage
from gateway.providers.registry import build_provider
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text, tool_use

API_KEY = "sk-ant-gateway"
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
USER = {"role": "user", "content": "Hi"}


def request(**body: Any) -> dict[str, Any]:
    body.setdefault("messages", [USER])
    return translate_request({"model": "claude-x", **body}, default_max_tokens=4096)


# --- request: messages --------------------------------------------------------------------


def test_system_and_developer_messages_become_the_joined_top_level_system() -> None:
    out = request(
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            USER,
        ]
    )
    assert out["system"] == "You are terse.\n\nAnswer in French."
    assert out["messages"] == [{"role": "user", "content": "Hi"}]


def test_multi_turn_keeps_order_and_merges_consecutive_same_role_turns() -> None:
    out = request(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"},
        ]
    )
    assert out["messages"] == [
        {"role": "user", "content": [text("one"), text("two")]},
        {"role": "assistant", "content": [text("three"), text("four")]},
        {"role": "user", "content": "five"},
    ]


def test_image_urls_become_url_sources_and_data_urls_base64_sources() -> None:
    out = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"},
                    },
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                ],
            }
        ]
    )
    assert out["messages"][0]["content"] == [
        text("Compare"),
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
    ]


def test_pdf_file_parts_become_document_blocks() -> None:
    out = request(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "file",
                        "file": {
                            "file_data": "data:application/pdf;base64,JVBERi0=",
                            "filename": "a.pdf",
                        },
                    }
                ],
            }
        ]
    )
    assert out["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        }
    ]


def test_assistant_tool_calls_become_tool_use_blocks_with_parsed_input() -> None:
    out = request(
        messages=[
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": ""},
                    },
                ],
            },
        ]
    )
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [
            tool_use("toolu_1", "get_weather", {"city": "Paris"}),
            tool_use("toolu_2", "get_time", {}),
        ],
    }


def test_parallel_tool_results_merge_into_one_user_turn_before_following_text() -> None:
    out = request(
        messages=[
            USER,
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {
                "role": "tool",
                "tool_call_id": "toolu_2",
                "content": [{"type": "text", "text": "-3C"}],
            },
            {"role": "user", "content": "And tomorrow?"},
        ]
    )
    assert out["messages"][1]["content"][0] == text("Let me check.")
    assert out["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [text("-3C")]},
            text("And tomorrow?"),
        ],
    }
    assert len(out["messages"]) == 3


# --- request: tools and response_format ---------------------------------------------------


def test_tools_become_anthropic_tools_with_input_schema() -> None:
    bare = {"type": "function", "function": {"name": "now"}}
    out = request(tools=[WEATHER, bare])
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": WEATHER["function"]["parameters"],
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"type": "tool", "name": "get_weather"},
        ),
    ],
)
def test_tool_choice_maps_to_anthropic_tool_choice(choice: Any, expected: Any) -> None:
    assert request(tools=[WEATHER], tool_choice=choice)["tool_choice"] == expected


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    assert request(tools=[WEATHER], parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert request(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)[
        "tool_choice"
    ] == {"type": "any", "disable_parallel_tool_use": True}
    assert "tool_choice" not in request(tools=[WEATHER], parallel_tool_calls=True)
    # Without tools, Anthropic takes no tool_choice at all.
    assert "tool_choice" not in request(tool_choice="required", parallel_tool_calls=False)


SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "math_answer", "schema": SCHEMA, "strict": True},
}


def test_json_schema_becomes_a_forced_tool_named_after_the_schema() -> None:
    out = request(response_format=JSON_SCHEMA)
    [tool] = out["tools"]
    assert tool["name"] == "math_answer"
    assert tool["input_schema"] == SCHEMA
    assert tool["description"]
    assert out["tool_choice"] == {
        "type": "tool",
        "name": "math_answer",
        "disable_parallel_tool_use": True,
    }


def test_json_schema_with_real_tools_lets_the_model_call_a_tool_or_answer() -> None:
    out = request(response_format=JSON_SCHEMA, tools=[WEATHER])
    assert [t["name"] for t in out["tools"]] == ["get_weather", "math_answer"]
    assert out["tool_choice"] == {"type": "any"}


def test_json_object_becomes_a_system_instruction() -> None:
    out = request(
        response_format={"type": "json_object"},
        messages=[{"role": "system", "content": "Be exact."}, USER],
    )
    assert out["system"] == "Be exact.\n\n" + JSON_OBJECT_INSTRUCTION
    assert "tools" not in out


# --- request: parameters ------------------------------------------------------------------


def test_parameters_map_and_openai_only_ones_are_dropped() -> None:
    out = request(
        stop="END",
        max_completion_tokens=300,
        max_tokens=100,
        temperature=0.2,
        top_p=0.9,
        user="user-42",
        stream=True,
        stream_options={"include_usage": True},
        frequency_penalty=0.5,
        presence_penalty=0.1,
        seed=7,
        logit_bias={"1": 2},
        n=1,
        logprobs=False,
    )
    assert out == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 300,
        "stop_sequences": ["END"],
        "temperature": 0.2,
        "top_p": 0.9,
        "metadata": {"user_id": "user-42"},
        "stream": True,
    }
    assert request(stop=["a", "b"], max_tokens=100)["stop_sequences"] == ["a", "b"]
    assert request(max_tokens=100)["max_tokens"] == 100
    assert request()["max_tokens"] == 4096  # Anthropic requires it: the configured default


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", 2), ("logprobs", True), ("top_logprobs", 3)],
)
def test_unsupported_parameters_are_a_clear_400(field: str, value: Any) -> None:
    with pytest.raises(UpstreamFailure) as info:
        request(**{field: value})
    failure = info.value
    assert (failure.kind, failure.status) == ("unsupported", 400)
    assert failure.upstream_error is not None
    assert failure.upstream_error["param"] == field
    assert failure.upstream_error["type"] == "invalid_request_error"
    client = failure.to_client_error()
    assert client.status == 400 and client.param == field


def test_malformed_tool_arguments_and_audio_input_are_a_clear_400() -> None:
    bad_call = {
        "role": "assistant",
        "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{nope"}}
        ],
    }
    audio = {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
    for messages in ([USER, bad_call], [audio]):
        with pytest.raises(UpstreamFailure) as info:
            request(messages=messages)
        assert info.value.status == 400


# --- response -----------------------------------------------------------------------------


def message(
    content: list[dict[str, Any]], stop_reason: str = "end_turn", **usage: int
) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-x-2025",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


def test_text_message_becomes_an_exact_chat_completion() -> None:
    answer = translate_response(message([text("Hello"), text(" world")]), created=1700000000)
    assert answer == {
        "id": "chatcmpl-msg_01",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-x-2025",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello world",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    ChatCompletion.model_validate(answer)


def test_tool_use_becomes_tool_calls_with_json_arguments() -> None:
    answer = translate_response(
        message(
            [
                tool_use("toolu_1", "get_weather", {"city": "Paris"}),
                tool_use("toolu_2", "get_weather", {"city": "Oslo"}),
            ],
            "tool_use",
        )
    )
    choice = ChatCompletion.model_validate(answer).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    assert [
        (c.id, c.function.name, orjson.loads(c.function.arguments))  # type: ignore[union-attr]
        for c in choice.message.tool_calls
    ] == [
        ("toolu_1", "get_weather", {"city": "Paris"}),
        ("toolu_2", "get_weather", {"city": "Oslo"}),
    ]


def test_json_schema_tool_answer_becomes_the_content() -> None:
    answer = translate_response(
        message([tool_use("toolu_1", "math_answer", {"answer": 4})], "tool_use"),
        structured_tool="math_answer",
    )
    choice = ChatCompletion.model_validate(answer).choices[0]
    assert orjson.loads(choice.message.content or "") == {"answer": 4}
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str, finish: str) -> None:
    content = [tool_use("toolu_1", "f", {})] if stop_reason == "tool_use" else [text("x")]
    answer = translate_response(message(content, stop_reason))
    assert answer["choices"][0]["finish_reason"] == finish


def test_usage_counts_cache_reads_and_writes_as_prompt_tokens() -> None:
    usage = openai_usage(
        {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 50,
            "output_tokens": 7,
        }
    )
    assert usage == {
        "prompt_tokens": 160,
        "completion_tokens": 7,
        "total_tokens": 167,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


# --- stream translation -------------------------------------------------------------------


def sse(event: dict[str, Any]) -> bytes:
    name: str = event["type"]
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def start_event(
    input_tokens: int = 10, cache_read: int = 0, cache_write: int = 0
) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": "msg_s1",
            "type": "message",
            "role": "assistant",
            "model": "claude-x-2025",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "cache_read_input_tokens": cache_read,
                "cache_creation_input_tokens": cache_write,
                "output_tokens": 1,
            },
        },
    }


def text_events(index: int, *pieces: str) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index, "content_block": text("")},
        *(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "text_delta", "text": p},
            }
            for p in pieces
        ),
        {"type": "content_block_stop", "index": index},
    ]


def tool_events(index: int, id_: str, name: str, *fragments: str) -> list[dict[str, Any]]:
    return [
        {"type": "content_block_start", "index": index, "content_block": tool_use(id_, name, {})},
        *(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": f},
            }
            for f in fragments
        ),
        {"type": "content_block_stop", "index": index},
    ]


def end_events(stop_reason: str, output_tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
        {"type": "message_stop"},
    ]


def payloads(events: list[bytes]) -> list[Any]:
    out = []
    for event in events:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        payload = event[6:-2]
        out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


def translate_stream(events: list[dict[str, Any]], **options: Any) -> list[Any]:
    options.setdefault("include_usage", True)
    translator = StreamTranslator(model="claude-x", created=1700000000, **options)
    out: list[bytes] = []
    for event in events:
        out.extend(translator.feed(sse(event)))
    translator.finish()
    return payloads(out)


def accumulate(chunks: list[Any], **state_options: Any) -> Any:
    """What the openai SDK makes of the chunks: each validated, then accumulated."""
    assert chunks[-1] == "[DONE]"
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState(**state_options)
    for chunk in chunks[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    return state.get_final_completion()


def test_text_stream_becomes_exact_openai_chunks() -> None:
    chunks = translate_stream(
        [
            start_event(),
            {"type": "ping"},
            *text_events(0, "Hel", "lo"),
            *end_events("end_turn", 6),
        ]
    )
    base = {
        "id": "chatcmpl-msg_s1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "claude-x-2025",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": None,
        }

    assert chunks == [
        chunk({"role": "assistant", "content": "", "refusal": None}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, "stop"),
        {
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 6,
                "total_tokens": 16,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        },
        "[DONE]",
    ]
    final = accumulate(chunks)
    assert final.choices[0].message.content == "Hello"
    assert final.usage.completion_tokens == 6


def test_stream_without_include_usage_has_no_usage_anywhere() -> None:
    chunks = translate_stream(
        [start_event(), *text_events(0, "x"), *end_events("end_turn", 2)], include_usage=False
    )
    assert all("usage" not in c for c in chunks[:-1])
    assert all(c["choices"] for c in chunks[:-1])


def test_stream_usage_takes_input_from_message_start_and_output_from_message_delta() -> None:
    translator = StreamTranslator(model="m", include_usage=True)
    for event in [
        start_event(5, cache_read=200, cache_write=30),
        *text_events(0, "x"),
        *end_events("max_tokens", 42),
    ]:
        last = translator.feed(sse(event))
    usage = payloads(last)[-2]["usage"]
    assert usage == {
        "prompt_tokens": 235,
        "completion_tokens": 42,
        "total_tokens": 277,
        "prompt_tokens_details": {"cached_tokens": 200},
    }
    assert translator.usage == Usage(235, 42, 200, 30)  # 30 written to the cache


def test_streamed_tool_calls_get_openai_indexes_ids_names_and_argument_fragments() -> None:
    chunks = translate_stream(
        [
            start_event(),
            *text_events(0, "Checking."),
            *tool_events(1, "toolu_a", "get_weather", '{"city', '": "Par', 'is"}'),
            *tool_events(2, "toolu_b", "get_weather", '{"city": "Oslo"}'),
            *end_events("tool_use", 30),
        ]
    )
    deltas = [c["choices"][0]["delta"] for c in chunks[:-2] if c["choices"]]
    tool_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert tool_deltas[0] == {
        "index": 0,
        "id": "toolu_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert tool_deltas[1] == {"index": 0, "function": {"arguments": '{"city'}}
    assert tool_deltas[4] == {
        "index": 1,
        "id": "toolu_b",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert chunks[-3]["choices"][0]["finish_reason"] == "tool_calls"
    final = accumulate(chunks, input_tools=[WEATHER])
    calls = final.choices[0].message.tool_calls
    assert [(c.id, c.function.name, orjson.loads(c.function.arguments)) for c in calls] == [
        ("toolu_a", "get_weather", {"city": "Paris"}),
        ("toolu_b", "get_weather", {"city": "Oslo"}),
    ]
    assert final.choices[0].message.content == "Checking."


def test_streamed_tool_call_without_arguments_still_gets_parseable_json() -> None:
    chunks = translate_stream(
        [start_event(), *tool_events(0, "toolu_x", "now", ""), *end_events("tool_use", 3)]
    )
    final = accumulate(chunks)
    assert final.choices[0].message.tool_calls[0].function.arguments == "{}"


class MathAnswer(pydantic.BaseModel):
    answer: int


def test_streamed_json_schema_answer_arrives_as_content() -> None:
    chunks = translate_stream(
        [
            start_event(),
            *tool_events(0, "toolu_s", "math_answer", '{"ans', 'wer": 4}'),
            *end_events("tool_use", 9),
        ],
        structured_tool="math_answer",
    )
    assert all("tool_calls" not in c["choices"][0]["delta"] for c in chunks[:-2])
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    final = accumulate(chunks, response_format=MathAnswer)
    assert final.choices[0].message.parsed == MathAnswer(answer=4)


def test_thinking_and_unknown_events_are_dropped() -> None:
    chunks = translate_stream(
        [
            start_event(),
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "hmm"},
            },
            {"type": "content_block_stop", "index": 0},
            {"type": "some_future_event"},
            *text_events(1, "ok"),
            *end_events("end_turn", 3),
        ]
    )
    assert accumulate(chunks).choices[0].message.content == "ok"
    assert len(chunks) == 5  # role, "ok", finish, usage, [DONE]


@pytest.mark.parametrize(
    ("error_type", "kind"),
    [
        ("overloaded_error", "5xx"),
        ("api_error", "5xx"),
        ("rate_limit_error", "429"),
        ("invalid_request_error", "client_error"),
    ],
)
def test_error_event_raises_a_classified_failure(error_type: str, kind: str) -> None:
    translator = StreamTranslator(model="m", include_usage=True, what="a/claude")
    translator.feed(sse(start_event()))
    error = {"type": "error", "error": {"type": error_type, "message": "Overloaded right now"}}
    with pytest.raises(UpstreamFailure) as info:
        translator.feed(sse(error))
    assert info.value.kind == kind
    assert "Overloaded right now" in info.value.message
    assert info.value.upstream_error == error["error"]


def test_stream_ending_before_message_stop_is_a_reset() -> None:
    translator = StreamTranslator(model="m", include_usage=True)
    translator.feed(sse(start_event()))
    with pytest.raises(UpstreamFailure) as info:
        translator.finish()
    assert info.value.kind == "reset"


# --- the provider against the fake upstream -----------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic(API_KEY)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def provider(fake: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    config = AnthropicProviderConfig(
        type="anthropic", base_url=fake.url, api_key=API_KEY, default_max_tokens=1024
    )
    built = build_provider("a", config)
    assert isinstance(built, AnthropicProvider)
    yield built
    await built.aclose()


def upstream_call(first_token: float = 10, total: float = 20, **body: Any) -> UpstreamCall:
    body.setdefault("messages", [USER])
    model = ModelConfig(
        provider="a",
        model="claude-x",
        timeout=TimeoutConfig(connect=2, first_token=first_token, total=total),
    )
    return UpstreamCall("claude", model.timeout, {"model": "claude-x", **body}, "req-1")


async def read_all(stream: EventStream) -> list[Any]:
    events: list[bytes] = []
    completed = False
    try:
        while (batch := await stream.next_events()) is not None:
            events.extend(batch)
        completed = True
    finally:
        await stream.aclose(completed=completed)
    return payloads(events)


async def test_provider_chat_answers_an_openai_chat_completion(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.next(
        Reply(
            content=[text("Bonjour")], input_tokens=20, output_tokens=4, cache_read_input_tokens=8
        )
    )
    answer = await provider.chat(
        upstream_call(messages=[{"role": "system", "content": "French only."}, USER], user="u-1")
    )
    completion = ChatCompletion.model_validate_json(answer.body)
    assert completion.id == "chatcmpl-msg_fake0001"
    assert completion.model == "claude-x"
    assert completion.choices[0].message.content == "Bonjour"
    assert completion.choices[0].finish_reason == "stop"
    assert answer.usage == Usage(28, 4, 8)
    sent = fake.requests[-1]
    assert sent.headers["x-api-key"] == API_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body == {
        "model": "claude-x",
        "system": "French only.",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1024,
        "metadata": {"user_id": "u-1"},
    }


async def test_provider_tool_round_trip_is_accepted_by_the_upstream(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.next(
        Reply(
            content=[
                tool_use("toolu_p", "get_weather", {"city": "Paris"}),
                tool_use("toolu_o", "get_weather", {"city": "Oslo"}),
            ],
            stop_reason="tool_use",
        )
    )
    first = ChatCompletion.model_validate_json(
        (await provider.chat(upstream_call(tools=[WEATHER]))).body
    )
    assistant = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    # The client sends the assistant turn back with both results, as the openai SDK would.
    messages = [USER, assistant.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": call.id, "content": f"sunny in {i}"}
        for i, call in enumerate(assistant.tool_calls or [])
    ]
    second = ChatCompletion.model_validate_json(
        (await provider.chat(upstream_call(tools=[WEATHER], messages=messages))).body
    )
    assert second.choices[0].message.content == "Hello from Claude"
    assert [turn["role"] for turn in fake.last_body["messages"]] == ["user", "assistant", "user"]
    assert [block["tool_use_id"] for block in fake.last_body["messages"][2]["content"]] == [
        "toolu_p",
        "toolu_o",
    ]


async def test_provider_stream_answers_openai_chunks_ending_in_done(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.next(
        Reply(
            content=[text("Streaming from Claude")], output_tokens=5, cache_creation_input_tokens=3
        )
    )
    stream = await provider.chat_stream(
        upstream_call(stream=True, stream_options={"include_usage": True})
    )
    chunks = await read_all(stream)
    final = accumulate(chunks)
    assert final.choices[0].message.content == "Streaming from Claude"
    assert final.choices[0].finish_reason == "stop"
    assert final.usage.prompt_tokens == 15 and final.usage.completion_tokens == 5
    assert len(chunks) > 5  # several content chunks, not one lump
    assert fake.last_body["stream"] is True
    assert "stream_options" not in fake.last_body


async def test_provider_stream_of_tool_calls(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.next(
        Reply(
            content=[
                tool_use("toolu_1", "get_weather", {"city": "Buenos Aires"}),
                tool_use("toolu_2", "get_weather", {"city": "Lima"}),
            ],
            stop_reason="tool_use",
            chunk_chars=3,
        )
    )
    stream = await provider.chat_stream(
        upstream_call(
            stream=True,
            stream_options={"include_usage": True},
            tools=[WEATHER],
            tool_choice="required",
            parallel_tool_calls=True,
        )
    )
    final = accumulate(await read_all(stream), input_tools=[WEATHER])
    calls = final.choices[0].message.tool_calls
    assert [(c.id, orjson.loads(c.function.arguments)) for c in calls] == [
        ("toolu_1", {"city": "Buenos Aires"}),
        ("toolu_2", {"city": "Lima"}),
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    assert fake.last_body["tool_choice"] == {"type": "any"}


async def test_provider_json_schema_answer_is_content_streamed_or_not(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    reply = Reply(
        content=[tool_use("toolu_s", "math_answer", {"answer": 4})], stop_reason="tool_use"
    )
    fake.next(reply, reply)
    answer = await provider.chat(upstream_call(response_format=JSON_SCHEMA))
    completion = ChatCompletion.model_validate_json(answer.body)
    assert orjson.loads(completion.choices[0].message.content or "") == {"answer": 4}
    assert completion.choices[0].finish_reason == "stop"
    assert fake.last_body["tool_choice"]["name"] == "math_answer"
    stream = await provider.chat_stream(
        upstream_call(
            stream=True, stream_options={"include_usage": True}, response_format=JSON_SCHEMA
        )
    )
    final = accumulate(await read_all(stream), response_format=MathAnswer)
    assert final.choices[0].message.parsed == MathAnswer(answer=4)


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (400, "max_tokens: must be at most 8192", "client_error"),
        (400, "prompt is too long: 210000 tokens > 200000 maximum", "context_length"),
        (403, "not allowed", "client_error"),
        (404, "model: claude-x", "client_error"),
        (429, "Number of request tokens has exceeded your per-minute rate limit", "429"),
        (500, "Internal server error", "5xx"),
        (529, "Overloaded", "5xx"),
    ],
)
async def test_provider_classifies_anthropic_http_errors(
    fake: FakeAnthropic, provider: AnthropicProvider, status: int, message: str, kind: str
) -> None:
    headers = {"retry-after": "7"} if status == 429 else {}
    fake.next(Reply(status=status, error_message=message, headers=headers))
    with pytest.raises(UpstreamFailure) as info:
        await provider.chat(upstream_call())
    failure = info.value
    assert (failure.kind, failure.status) == (kind, status)
    assert failure.upstream_error is not None
    assert failure.upstream_error["message"] == message
    assert message in failure.message
    if status == 429:
        assert failure.retry_after == 7
    if status == 400:
        client = failure.to_client_error()
        assert (client.status, client.type, client.message) == (
            400,
            "invalid_request_error",
            message,
        )


async def test_provider_stream_http_error_and_wrong_key_fail_before_any_event(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.next(Reply(status=529, error_message="Overloaded"))
    with pytest.raises(UpstreamFailure) as info:
        await provider.chat_stream(upstream_call(stream=True))
    assert info.value.kind == "5xx"
    fake.api_key = "another-key"
    with pytest.raises(UpstreamFailure) as info:
        await provider.chat(upstream_call())
    assert (info.value.kind, info.value.status) == ("client_error", 401)


async def test_provider_stream_error_event_mid_stream_raises_from_next_events(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.next(Reply(content=[text("a long answer cut short")], error_event_after=4))
    stream = await provider.chat_stream(upstream_call(stream=True))
    with pytest.raises(UpstreamFailure) as info:
        await read_all(stream)
    assert info.value.kind == "5xx"
    assert info.value.upstream_error == {"type": "overloaded_error", "message": "Overloaded"}


async def test_provider_stream_cut_before_message_stop_is_a_reset(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.next(Reply(content=[text("cut")], cut_after=4))
    stream = await provider.chat_stream(upstream_call(stream=True))
    with pytest.raises(UpstreamFailure) as info:
        await read_all(stream)
    assert info.value.kind == "reset"


async def test_provider_times_out_past_the_total(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.next(Reply(delay_s=2))
    with pytest.raises(UpstreamFailure) as info:
        await provider.chat(upstream_call(first_token=0.1, total=0.3))
    assert info.value.kind == "timeout"


async def test_a_whole_answer_is_not_cut_at_first_token(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    fake.next(Reply(delay_s=0.5))
    answer = await provider.chat(upstream_call(first_token=0.1, total=5))
    assert answer.usage is not None


async def test_provider_refuses_unsupported_requests_without_calling_upstream(
    fake: FakeAnthropic, provider: AnthropicProvider
) -> None:
    with pytest.raises(UpstreamFailure) as info:
        await provider.chat(upstream_call(n=3))
    assert (info.value.status, info.value.upstream_error["param"]) == (  # type: ignore[index]
        400,
        "n",
    )
    with pytest.raises(UpstreamFailure) as info:
        await provider.embeddings(upstream_call(input="hello"))
    assert (info.value.kind, info.value.status) == ("unsupported", 400)
    assert "embeddings" in info.value.upstream_error["message"]  # type: ignore[index]
    assert fake.requests == []
