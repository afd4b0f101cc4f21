"""The Anthropic Messages ingress over a chat-completions upstream: pure translation tests.

Requests are checked field by field; answers, stream events and errors are checked by the
real `anthropic` SDK (its pydantic types, its stream accumulator, and the whole client over
an in-memory transport), so that what the gateway sends is what Anthropic clients accept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import anthropic
import httpx2
import orjson
import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, MessageParam, RawMessageStreamEvent

from gateway.errors import InvalidRequest
from gateway.ingress.messages.errors import (
    anthropic_error_type,
    anthropic_status,
    error_body,
)
from gateway.ingress.messages.from_chat import (
    message_from_chat,
    new_message_id,
    stop_reason,
)
from gateway.ingress.messages.stream_from_chat import MessagesStreamWriter
from gateway.ingress.messages.to_chat import chat_request, estimate_text
from gateway.sse import EventSplitter, event_data

USER = {"role": "user", "content": "Hi"}
SDK_USER: MessageParam = {"role": "user", "content": "Hi"}
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
EVENTS: pydantic.TypeAdapter[RawMessageStreamEvent] = pydantic.TypeAdapter(RawMessageStreamEvent)


def body(**fields: Any) -> dict[str, Any]:
    fields.setdefault("model", "claude-sonnet-4-5")
    fields.setdefault("max_tokens", 100)
    fields.setdefault("messages", [USER])
    return fields


# --- request: to_chat ----------------------------------------------------------------------


def test_minimal_request_keeps_model_and_max_tokens() -> None:
    assert chat_request(body()) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hi"}],
    }


def test_system_string_becomes_a_system_message() -> None:
    out = chat_request(body(system="Be brief."))
    assert out["messages"][0] == {"role": "system", "content": "Be brief."}
    assert out["messages"][1] == {"role": "user", "content": "Hi"}


def test_system_blocks_are_joined_and_cache_control_dropped() -> None:
    system = [
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Use tools."},
    ]
    out = chat_request(body(system=system))
    assert out["messages"][0] == {"role": "system", "content": "You are Claude Code.\n\nUse tools."}
    assert b"cache_control" not in orjson.dumps(out)


def test_empty_system_adds_no_message() -> None:
    assert chat_request(body(system=""))["messages"] == [{"role": "user", "content": "Hi"}]
    assert chat_request(body(system=[]))["messages"] == [{"role": "user", "content": "Hi"}]


def test_multi_turn_conversation_keeps_roles_and_order() -> None:
    messages = [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": [{"type": "text", "text": "Two"}]},
        {"role": "user", "content": [{"type": "text", "text": "Three", "cache_control": {}}]},
    ]
    assert chat_request(body(messages=messages))["messages"] == [
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "Two"},
        {"role": "user", "content": "Three"},
    ]


def test_images_become_image_url_parts() -> None:
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
    ]
    out = chat_request(body(messages=[{"role": "user", "content": content}]))
    assert out["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
            ],
        }
    ]


def test_documents_of_text_become_text_and_pdfs_file_parts() -> None:
    content = [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "A"}},
        {"type": "document", "source": {"type": "content", "content": "B"}},
        {
            "type": "document",
            "source": {"type": "content", "content": [{"type": "text", "text": "C"}]},
        },
        {
            "type": "document",
            "title": "paper.pdf",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        },
        {"type": "document", "source": {"type": "url", "url": "https://example.com/x.pdf"}},
    ]
    out = chat_request(body(messages=[{"role": "user", "content": content}]))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "A"},
        {"type": "text", "text": "B"},
        {"type": "text", "text": "C"},
        {
            "type": "file",
            "file": {"filename": "paper.pdf", "file_data": "data:application/pdf;base64,JVBE"},
        },
    ]


def test_assistant_tool_use_becomes_tool_calls_with_compact_arguments() -> None:
    messages = [
        USER,
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "xyz"},
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris", "units": ["c"]},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}},
            ],
        },
    ]
    out = chat_request(body(messages=messages))
    assert out["messages"][1] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris","units":["c"]}'},
            },
            {"id": "toolu_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ],
    }


def test_assistant_with_only_tool_use_has_null_content() -> None:
    messages = [
        USER,
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        },
    ]
    assert chat_request(body(messages=messages))["messages"][1]["content"] is None


def test_assistant_turn_of_only_thinking_is_dropped() -> None:
    messages = [
        USER,
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": ""}]},
        {"role": "user", "content": "Again"},
    ]
    out = chat_request(body(messages=messages))
    assert [m["role"] for m in out["messages"]] == ["user", "user"]


def test_tool_results_become_tool_messages_before_the_rest_of_the_turn() -> None:
    messages = [
        USER,
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "a", "input": {}},
                {"type": "tool_use", "id": "toolu_2", "name": "b", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Here you go"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "line 1"}, {"type": "text", "text": "2"}],
                    "cache_control": {"type": "ephemeral"},
                },
            ],
        },
    ]
    out = chat_request(body(messages=messages))["messages"]
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "line 1\n2"},
        {"role": "user", "content": "Here you go"},
    ]


def test_failed_tool_result_is_prefixed_so_the_model_knows() -> None:
    content = [
        {"type": "tool_result", "tool_use_id": "t1", "content": "no such file", "is_error": True},
        {"type": "tool_result", "tool_use_id": "t2", "is_error": True},
    ]
    out = chat_request(body(messages=[{"role": "user", "content": content}]))["messages"]
    assert out == [
        {"role": "tool", "tool_call_id": "t1", "content": "Error: no such file"},
        {"role": "tool", "tool_call_id": "t2", "content": "Error:"},
    ]


def test_images_in_a_tool_result_move_to_the_following_user_message() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "Q"}}
    content = [
        {
            "type": "tool_result",
            "tool_use_id": "t1",
            "content": [{"type": "text", "text": "screenshot"}, image],
        }
    ]
    out = chat_request(body(messages=[{"role": "user", "content": content}]))["messages"]
    assert out == [
        {"role": "tool", "tool_call_id": "t1", "content": "screenshot"},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,Q"}}],
        },
    ]


def test_tools_become_function_tools_and_server_tools_are_dropped() -> None:
    tools = [
        {**WEATHER, "cache_control": {"type": "ephemeral"}},
        {"type": "custom", "name": "now", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "bash_20250124", "name": "bash"},
        {"name": "no_schema"},
    ]
    out = chat_request(body(tools=tools))
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER["input_schema"],
            },
        },
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_tool_choice_maps_to_chat_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    assert chat_request(body(tools=[WEATHER], tool_choice=choice))["tool_choice"] == expected


def test_tool_choice_naming_a_dropped_tool_is_left_to_the_default() -> None:
    out = chat_request(body(tools=[WEATHER], tool_choice={"type": "tool", "name": "web_search"}))
    assert "tool_choice" not in out


def test_disable_parallel_tool_use_becomes_parallel_tool_calls_false() -> None:
    choice = {"type": "auto", "disable_parallel_tool_use": True}
    out = chat_request(body(tools=[WEATHER], tool_choice=choice))
    assert out["tool_choice"] == "auto"
    assert out["parallel_tool_calls"] is False
    assert "parallel_tool_calls" not in chat_request(body(tools=[WEATHER]))


def test_without_tools_left_no_tool_fields_go_upstream() -> None:
    server_only = [{"type": "web_search_20250305", "name": "web_search"}]
    choice = {"type": "any", "disable_parallel_tool_use": True}
    out = chat_request(body(tools=server_only, tool_choice=choice))
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & out.keys()


def test_sampling_stop_stream_and_user() -> None:
    out = chat_request(
        body(
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END", "STOP"],
            stream=True,
            metadata={"user_id": "user-42"},
        )
    )
    assert out["temperature"] == 0.2
    assert out["top_p"] == 0.9
    assert out["stop"] == ["END", "STOP"]
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}
    assert out["user"] == "user-42"
    assert "top_k" not in out
    assert "metadata" not in out


def test_not_streaming_sends_no_stream_options() -> None:
    out = chat_request(body(stream=False))
    assert "stream" not in out
    assert "stream_options" not in out


@pytest.mark.parametrize(
    ("budget", "effort"),
    [(1024, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"), (16384, "high")],
)
def test_thinking_budget_becomes_reasoning_effort(budget: int, effort: str) -> None:
    thinking = {"type": "enabled", "budget_tokens": budget}
    assert chat_request(body(thinking=thinking), reasoning=True)["reasoning_effort"] == effort


def test_thinking_is_dropped_for_upstreams_without_reasoning() -> None:
    out = chat_request(body(thinking={"type": "enabled", "budget_tokens": 8000}))
    assert "reasoning_effort" not in out
    assert "thinking" not in out
    assert "reasoning_effort" not in chat_request(
        body(thinking={"type": "disabled"}), reasoning=True
    )


def test_anthropic_only_and_unknown_fields_are_dropped_never_refused() -> None:
    extra = {
        "service_tier": "auto",
        "container": "c1",
        "mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}],
        "output_config": {"effort": "high"},
        "context_management": {"edits": []},
        "brand_new_field": {"x": 1},
    }
    out = chat_request(body(**extra))
    assert set(out) == {"model", "max_tokens", "messages"}


def test_unknown_content_blocks_are_dropped() -> None:
    content = [
        {"type": "text", "text": "Hi"},
        {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}},
        {"type": "future_block"},
    ]
    out = chat_request(body(messages=[{"role": "user", "content": content}]))
    assert out["messages"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    "messages",
    [
        None,
        "Hi",
        [{"role": "system", "content": "x"}],
        [{"role": "user", "content": 42}],
        [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}],
        [{"role": "assistant", "content": [{"type": "tool_use", "input": {}}]}],
    ],
)
def test_malformed_messages_are_invalid_requests(messages: Any) -> None:
    with pytest.raises(InvalidRequest):
        chat_request(body(messages=messages))


def test_estimate_text_has_every_text_of_the_request() -> None:
    messages = [
        {"role": "user", "content": "question"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "secret", "signature": ""},
                {"type": "tool_use", "id": "t", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t", "content": "rainy"}],
        },
    ]
    text = estimate_text(
        body(system=[{"type": "text", "text": "sys prompt"}], messages=messages, tools=[WEATHER])
    )
    for piece in ("sys prompt", "question", "get_weather", '"city":"Oslo"', "rainy"):
        assert piece in text
    assert "Weather for a city" in text  # the tool definitions
    assert "secret" not in text


# --- answer: from_chat ---------------------------------------------------------------------


def completion(
    message: dict[str, Any], finish: str | None = "stop", **extra: Any
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream-id",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **extra}],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 7,
            "total_tokens": 37,
            "prompt_tokens_details": {"cached_tokens": 10},
        },
    }


def test_text_answer_is_an_anthropic_message() -> None:
    answer = completion({"role": "assistant", "content": "Hello!"})
    message = message_from_chat(answer, model="claude-sonnet-4-5")
    parsed = Message.model_validate(message)
    assert parsed.id.startswith("msg_")
    assert parsed.model == "claude-sonnet-4-5"
    assert parsed.content[0].type == "text"
    assert parsed.content[0].text == "Hello!"
    assert parsed.stop_reason == "end_turn"
    assert parsed.stop_sequence is None
    assert message["usage"] == {
        "input_tokens": 20,
        "output_tokens": 7,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 10,
    }


def test_message_id_can_be_given() -> None:
    answer = completion({"role": "assistant", "content": "x"})
    assert message_from_chat(answer, model="m", message_id="msg_given")["id"] == "msg_given"


def test_new_message_ids_are_shaped_like_anthropics() -> None:
    ids = {new_message_id() for _ in range(50)}
    assert len(ids) == 50
    for message_id in ids:
        assert message_id.startswith("msg_")
        assert len(message_id) == 28
        assert message_id[4:].isalnum()


def test_reasoning_text_and_tool_calls_become_blocks_in_order() -> None:
    answer = completion(
        {
            "role": "assistant",
            "reasoning_content": "Think first.",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"type": "function", "function": {"name": "now", "arguments": ""}},
                {"id": "call_3", "type": "function", "function": {"name": "x", "arguments": "{"}},
            ],
        },
        "tool_calls",
    )
    message = message_from_chat(answer, model="m")
    parsed = Message.model_validate(message)
    assert [block.type for block in parsed.content] == [
        "thinking",
        "text",
        "tool_use",
        "tool_use",
        "tool_use",
    ]
    assert message["content"][0] == {
        "type": "thinking",
        "thinking": "Think first.",
        "signature": "",
    }
    assert message["content"][2] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    generated = message["content"][3]
    assert generated["id"].startswith("toolu_")
    assert generated["input"] == {}
    assert message["content"][4]["input"] == {}  # invalid JSON
    assert parsed.stop_reason == "tool_use"


def test_null_content_and_reasoning_field() -> None:
    answer = completion({"role": "assistant", "content": None, "reasoning": "r"}, "length")
    message = message_from_chat(answer, model="m")
    assert message["content"] == [{"type": "thinking", "thinking": "r", "signature": ""}]
    assert message["stop_reason"] == "max_tokens"
    Message.model_validate(message)


def test_refusal_is_text_with_stop_reason_refusal() -> None:
    answer = completion({"role": "assistant", "content": None, "refusal": "I can't."})
    message = message_from_chat(answer, model="m")
    assert message["content"] == [{"type": "text", "text": "I can't."}]
    assert message["stop_reason"] == "refusal"


def test_tool_calls_with_finish_stop_still_stop_for_tool_use() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    answer = completion({"role": "assistant", "content": None, "tool_calls": [call]}, "stop")
    assert message_from_chat(answer, model="m")["stop_reason"] == "tool_use"


def test_vllm_matched_stop_string_is_a_stop_sequence() -> None:
    answer = completion({"role": "assistant", "content": "a"}, "stop", stop_reason="END")
    message = message_from_chat(answer, model="m")
    assert message["stop_reason"] == "stop_sequence"
    assert message["stop_sequence"] == "END"
    Message.model_validate(message)


def test_answer_without_usage_or_choices_still_validates() -> None:
    message = message_from_chat({"choices": []}, model="m")
    parsed = Message.model_validate(message)
    assert parsed.content == []
    assert parsed.usage.input_tokens == 0
    assert parsed.usage.output_tokens == 0


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        ("something_new", "end_turn"),
        (None, "end_turn"),
    ],
)
def test_stop_reason(finish: str | None, reason: str) -> None:
    assert stop_reason(finish) == reason


# --- stream: stream_from_chat --------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-id",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def text(value: str | None) -> dict[str, Any]:
    return chunk({"content": value})


def tool(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> Any:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call["id"] = call_id
        call["type"] = "function"
    if name is not None:
        call["function"]["name"] = name
    return chunk({"tool_calls": [call]})


def usage_chunk(prompt: int = 50, completion: int = 9, cached: int = 20) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "upstream-id",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


INTERLEAVED = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning_content": "Plan", "content": None}),
    chunk({"reasoning_content": " it.", "content": None}),
    text("I'll check"),
    text(" both."),
    tool(0, "", "call_a", "get_weather"),
    tool(0, '{"city":'),
    tool(0, ' "Paris"}'),
    tool(1, '{"city": "Oslo"}', "call_b", "get_weather"),
    text("Done."),
    chunk({}, "tool_calls"),
    usage_chunk(),
]


def sdk_client(handler: Callable[[httpx2.Request], httpx2.Response]) -> anthropic.Anthropic:
    """The real SDK client, its HTTP answered in memory by `handler`: no server needed."""
    return anthropic.Anthropic(
        api_key="k",
        base_url="http://gateway.test",
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
        max_retries=0,
    )


def run(writer: MessagesStreamWriter, chunks: Iterable[dict[str, Any]]) -> bytes:
    data = writer.start()
    for item in chunks:
        data += b"".join(writer.feed(item))
    return data + b"".join(writer.finish())


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, parsed data) of each SSE event; the name must match the data's type."""
    out = []
    for raw in EventSplitter().feed(data):
        name = raw.split(b"\n", 1)[0].removeprefix(b"event: ").decode()
        payload = event_data(raw)
        assert payload is not None
        parsed = orjson.loads(payload)
        assert parsed["type"] == name
        out.append((name, parsed))
    return out


def accumulate(data: bytes) -> Any:
    """The final message the SDK's own accumulator builds from these events, each validated
    against the SDK's event types first."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for name, payload in events(data):
        if name in ("ping", "error"):
            continue
        event = EVENTS.validate_python(payload)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    return snapshot


def assert_well_formed(parsed: list[tuple[str, dict[str, Any]]]) -> None:
    """One message_start first, one message_stop last, blocks 0..n each started, grown and
    stopped in turn, never a delta outside its open block."""
    names = [name for name, _ in parsed]
    assert names[0] == "message_start"
    assert names.count("message_start") == 1
    assert names[-1] == "message_stop"
    assert names.count("message_stop") == 1
    assert names[-2] == "message_delta"
    open_index: int | None = None
    next_index = 0
    for name, payload in parsed:
        if name == "content_block_start":
            assert open_index is None
            assert payload["index"] == next_index
            open_index = next_index
            next_index += 1
        elif name == "content_block_delta":
            assert payload["index"] == open_index
        elif name == "content_block_stop":
            assert payload["index"] == open_index
            open_index = None
    assert open_index is None


def test_interleaved_stream_has_balanced_blocks_numbered_without_gaps() -> None:
    data = run(MessagesStreamWriter("claude-x", input_tokens_estimate=42), INTERLEAVED)
    parsed = events(data)
    assert_well_formed(parsed)
    starts = [p["content_block"] for n, p in parsed if n == "content_block_start"]
    assert starts == [
        {"type": "thinking", "thinking": "", "signature": ""},
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {}},
        {"type": "text", "text": ""},
    ]
    start = parsed[0][1]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert start["model"] == "claude-x"
    assert start["usage"]["input_tokens"] == 42
    assert start["usage"]["output_tokens"] == 0


def test_interleaved_stream_accumulates_in_the_sdk() -> None:
    message = accumulate(run(MessagesStreamWriter("claude-x"), INTERLEAVED))
    assert [block.type for block in message.content] == [
        "thinking",
        "text",
        "tool_use",
        "tool_use",
        "text",
    ]
    assert message.content[0].thinking == "Plan it."
    assert message.content[1].text == "I'll check both."
    assert message.content[2].input == {"city": "Paris"}
    assert message.content[3].id == "call_b"
    assert message.content[3].input == {"city": "Oslo"}
    assert message.content[4].text == "Done."
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 30
    assert message.usage.cache_read_input_tokens == 20
    assert message.usage.output_tokens == 9


def test_whole_sdk_client_streams_the_events() -> None:
    data = run(MessagesStreamWriter("claude-x"), INTERLEAVED)

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=data)

    client = sdk_client(handler)
    with client.messages.stream(model="claude-x", max_tokens=10, messages=[SDK_USER]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "I'll check both.Done."
    tool_uses = [block for block in final.content if block.type == "tool_use"]
    assert [block.input for block in tool_uses] == [{"city": "Paris"}, {"city": "Oslo"}]


def test_message_start_is_sent_once_whether_or_not_the_caller_asked_first() -> None:
    writer = MessagesStreamWriter("m")
    first = writer.feed(text("a"))
    assert first[0].startswith(b"event: message_start\n")
    assert writer.start() == b""
    rest = writer.finish()
    names = [name for name, _ in events(b"".join(first + rest))]
    assert names.count("message_start") == 1


def test_finish_is_final_and_feed_after_it_sends_nothing() -> None:
    writer = MessagesStreamWriter("m")
    writer.feed(text("a"))
    assert writer.finish()
    assert writer.finish() == []
    assert writer.feed(text("b")) == []


def test_empty_stream_is_still_a_complete_message() -> None:
    data = run(MessagesStreamWriter("m"), [chunk({"role": "assistant", "content": ""}), {}])
    parsed = events(data)
    assert [name for name, _ in parsed] == ["message_start", "message_delta", "message_stop"]
    message = accumulate(data)
    assert message.content == []
    assert message.stop_reason == "end_turn"


def test_text_after_a_tool_call_opens_a_new_block() -> None:
    chunks = [text("A"), tool(0, "{}", "c1", "f"), text("B"), tool(1, "{}", "c2", "g")]
    parsed = events(run(MessagesStreamWriter("m"), chunks))
    assert_well_formed(parsed)
    kinds = [p["content_block"]["type"] for n, p in parsed if n == "content_block_start"]
    assert kinds == ["text", "tool_use", "text", "tool_use"]


def test_null_fields_and_chunks_without_choices_are_harmless() -> None:
    chunks = [
        {},
        {"choices": None},
        chunk({"content": None, "reasoning_content": None, "tool_calls": None}),
        chunk({"role": "assistant"}),
        text("ok"),
        {"choices": [{"index": 0, "delta": None, "finish_reason": None}]},
        chunk({}, "stop"),
    ]
    data = run(MessagesStreamWriter("m"), chunks)
    assert_well_formed(events(data))
    assert accumulate(data).content[0].text == "ok"


def test_reasoning_field_is_thinking_too() -> None:
    message = accumulate(run(MessagesStreamWriter("m"), [chunk({"reasoning": "hmm"}), text("x")]))
    assert message.content[0].type == "thinking"
    assert message.content[0].thinking == "hmm"


def test_tool_call_arguments_before_its_name_wait_for_the_name() -> None:
    chunks = [
        chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"arguments": '{"a"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": ": 1}"}}]}),
        chunk({}, "tool_calls"),
    ]
    message = accumulate(run(MessagesStreamWriter("m"), chunks))
    assert message.content[0].name == "f"
    assert message.content[0].id == "c1"
    assert message.content[0].input == {"a": 1}


def test_tool_call_without_id_gets_a_toolu_id() -> None:
    message = accumulate(run(MessagesStreamWriter("m"), [tool(0, "{}", name="f")]))
    assert message.content[0].id.startswith("toolu_")
    assert message.stop_reason == "tool_use"


def test_tool_calls_without_index_follow_their_ids() -> None:
    def call(arguments: str, call_id: str | None = None, name: str | None = None) -> Any:
        fields: dict[str, Any] = {"function": {"arguments": arguments}}
        if call_id:
            fields["id"] = call_id
            fields["function"]["name"] = name
        return chunk({"tool_calls": [fields]})

    chunks = [call('{"x":', "c1", "f"), call("1}"), call('{"y":2}', "c2", "g")]
    message = accumulate(run(MessagesStreamWriter("m"), chunks))
    assert [(b.id, b.input) for b in message.content] == [("c1", {"x": 1}), ("c2", {"y": 2})]


def test_has_open_tool_call_tracks_a_tool_in_progress() -> None:
    writer = MessagesStreamWriter("m")
    writer.feed(text("a"))
    assert not writer.has_open_tool_call
    writer.feed(tool(0, '{"a', "c1", "f"))
    assert writer.has_open_tool_call
    writer.feed(text("b"))
    assert not writer.has_open_tool_call
    assert writer.text == "ab"


@pytest.mark.parametrize(
    ("finish", "reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_stream_stop_reasons(finish: str | None, reason: str) -> None:
    chunks = [text("a"), chunk({}, finish)] if finish else [text("a")]
    parsed = events(run(MessagesStreamWriter("m"), chunks))
    delta = parsed[-2][1]
    assert delta["delta"] == {"stop_reason": reason, "stop_sequence": None}


def test_usage_is_remembered_and_reported_in_message_delta() -> None:
    writer = MessagesStreamWriter("m", input_tokens_estimate=7)
    assert writer.usage == (0, 0, 0)
    assert not writer.usage_reported
    writer.feed(text("a"))
    writer.feed(chunk({}, "stop"))
    writer.feed(usage_chunk(prompt=100, completion=12, cached=60))
    assert writer.usage == (100, 12, 60)
    assert writer.usage_reported
    delta = events(b"".join(writer.finish()))[-2][1]
    assert delta["usage"] == {
        "output_tokens": 12,
        "input_tokens": 40,
        "cache_read_input_tokens": 60,
    }


def test_without_usage_message_delta_has_output_tokens_only() -> None:
    parsed = events(run(MessagesStreamWriter("m"), [text("a")]))
    assert parsed[-2][1]["usage"] == {"output_tokens": 0}


def test_ping_and_error_events() -> None:
    writer = MessagesStreamWriter("m")
    assert events(writer.ping()) == [("ping", {"type": "ping"})]
    writer.feed(text("a"))
    error = events(writer.error("overloaded_error", "Every model failed"))
    assert error == [
        (
            "error",
            {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Every model failed"},
            },
        )
    ]
    assert writer.finish() == []


def test_sdk_raises_on_the_in_band_error_event() -> None:
    writer = MessagesStreamWriter("m")
    data = writer.start() + b"".join(writer.feed(text("partial")))
    data += writer.error("api_error", "upstream reset")

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=data)

    client = sdk_client(handler)
    with (
        pytest.raises(anthropic.APIStatusError, match="upstream reset"),
        client.messages.stream(model="m", max_tokens=10, messages=[SDK_USER]) as stream,
    ):
        for _ in stream:
            pass


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
        (405, "invalid_request_error"),
        (422, "invalid_request_error"),
        (501, "api_error"),
    ],
)
def test_anthropic_error_type(status: int, error_type: str) -> None:
    assert anthropic_error_type(status) == error_type


def test_anthropic_status() -> None:
    assert anthropic_status(503, "all_models_failed") == 529
    assert anthropic_status(429, "capacity") == 429
    assert anthropic_status(503, "service_unavailable") == 503
    assert anthropic_status(404, "model_not_found") == 404
    assert anthropic_status(502, None) == 502


def test_error_body_shape() -> None:
    assert orjson.loads(error_body(404, "no such model")) == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "no such model"},
    }
    with_id = orjson.loads(error_body(429, "slow down", request_id="req_1"))
    assert with_id["request_id"] == "req_1"


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, anthropic.BadRequestError),
        (401, anthropic.AuthenticationError),
        (403, anthropic.PermissionDeniedError),
        (404, anthropic.NotFoundError),
        (413, anthropic.RequestTooLargeError),
        (429, anthropic.RateLimitError),
        (502, anthropic.InternalServerError),
        (anthropic_status(503, "all_models_failed"), anthropic.OverloadedError),
    ],
)
def test_sdk_raises_the_matching_exception(status: int, exception: type[Exception]) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            status,
            headers={"content-type": "application/json", "request-id": "req_9"},
            content=error_body(status, "it failed"),
        )

    client = sdk_client(handler)
    with pytest.raises(exception) as caught:
        client.messages.create(model="m", max_tokens=10, messages=[SDK_USER])
    assert isinstance(caught.value, anthropic.APIStatusError)
    assert "it failed" in str(caught.value)
    assert caught.value.body == orjson.loads(error_body(status, "it failed"))
