"""The Responses API served by a chat upstream: request, answer and stream translation.

Every object and event the translators produce is checked three ways: against OpenAI's
published schema (vendored in tests/data/openapi), by the openai SDK's own pydantic types, and,
for streams, by the SDK's own client: `client.responses.stream(...)` over our bytes (an
in-memory transport, no network) must assemble the final response with the right text and
function calls. The chat completions fed in are themselves checked against the chat schema, so
the fixtures are what a real upstream sends.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import openai
import orjson
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from gateway.ingress.responses.from_chat import output_text, response_from_chat
from gateway.ingress.responses.stream_from_chat import ResponsesStreamWriter
from gateway.ingress.responses.to_chat import (
    InvalidRequest,
    chat_request,
    history_messages,
    input_messages,
)

SCHEMAS = Path(__file__).parent / "data" / "openapi"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent",
    "response.in_progress": "ResponseInProgressEvent",
    "response.completed": "ResponseCompletedEvent",
    "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent",
    "response.output_text.done": "ResponseTextDoneEvent",
    "response.refusal.delta": "ResponseRefusalDeltaEvent",
    "response.refusal.done": "ResponseRefusalDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
}
STREAM_EVENT = pydantic.TypeAdapter(ResponseStreamEvent)


# --- schema checks --------------------------------------------------------------------------


@cache
def validator(document: str, name: str, *, union: bool = False) -> Any:
    defs = json.loads((SCHEMAS / document).read_text())["$defs"]
    schema = {"$ref": f"#/$defs/{name}", "$defs": defs}
    return (UnionValidator if union else jsonschema.Draft202012Validator)(schema)


# Where OpenAI's spec disagrees with OpenAI's wire: the spec types `usage` as a non-null
# ResponseUsage and `user` as a string, while its own examples (every Response example, and
# the `response.created`, `in_progress` and `failed` events) carry `"usage": null` and
# `"user": null`, which the SDK types as Optional. The schema check leaves those nulls out;
# the SDK checks see the object as sent.
NULL_ON_THE_WIRE = ("usage", "user")


def spec_view(response: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in response.items()
        if not (key in NULL_ON_THE_WIRE and value is None)
    }


# The spec writes unions whose members overlap with `oneOf` (a user message is both an
# EasyInputMessage and an InputMessage); its code generators read `oneOf` as a union. Request
# bodies the tests send are checked that way; everything the translators produce is checked
# with the strict `oneOf`.
UnionValidator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]  # untyped in the stubs
    jsonschema.Draft202012Validator,
    {"oneOf": jsonschema.Draft202012Validator.VALIDATORS["anyOf"]},
)


def check_response(response: dict[str, Any]) -> Response:
    validator("responses.json", "Response").validate(spec_view(response))
    return Response.model_validate(response)


def check_chat(completion: dict[str, Any], *, chunk: bool = False) -> dict[str, Any]:
    name = "CreateChatCompletionStreamResponse" if chunk else "CreateChatCompletionResponse"
    validator("chat.json", name).validate(completion)
    return completion


def check_chat_request(body: dict[str, Any]) -> dict[str, Any]:
    validator("chat.json", "CreateChatCompletionRequest").validate(body)
    return body


def check_request(body: dict[str, Any]) -> dict[str, Any]:
    validator("responses.json", "CreateResponse", union=True).validate(body)
    return body


def parse_events(raw: list[bytes]) -> list[dict[str, Any]]:
    """Each SSE event: `event: <type>` then one `data:` line whose type matches, valid for the
    schema and the SDK, numbered 0, 1, 2... without a gap."""
    events = []
    for number, event in enumerate(raw):
        assert event.endswith(b"\n\n")
        name_line, data_line = event[:-2].split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        data = orjson.loads(data_line[len(b"data: ") :])
        assert data["type"] == name_line[len(b"event: ") :].decode()
        assert data["sequence_number"] == number
        checked = dict(data)
        if "response" in checked:
            checked["response"] = spec_view(checked["response"])
            Response.model_validate(data["response"])
        validator("responses.json", EVENT_SCHEMAS[data["type"]]).validate(checked)
        STREAM_EVENT.validate_python(data)
        events.append(data)
    return events


def sdk_stream(raw: list[bytes], request: dict[str, Any]) -> openai.types.responses.Response:
    """The openai client's own streaming helper (`responses.stream`, built on its
    ResponseStreamState accumulator) reading our bytes: the final response it assembles."""

    def answer(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(raw)
        )

    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://gateway.invalid/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )
    kwargs = {k: v for k, v in request.items() if k in ("model", "input", "tools")}
    with client.responses.stream(**kwargs) as stream:
        for _ in stream:
            pass
        return stream.get_final_response()


# --- chat fixtures ----------------------------------------------------------------------------


def chat_usage(prompt: int = 12, completion: int = 7, cached: int = 0, reasoning: int = 0) -> Any:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
    }


def chat_completion(
    content: str | None,
    tool_calls: list[dict[str, Any]] | None = None,
    finish_reason: str = "stop",
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return check_chat(
        {
            "id": "chatcmpl-abc123",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "upstream-model",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            ],
            "usage": usage or chat_usage(),
        }
    )


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return check_chat(
        {
            "id": "chatcmpl-abc123",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "upstream-model",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        },
        chunk=True,
    )


def usage_chunk(usage: dict[str, Any]) -> dict[str, Any]:
    return check_chat(
        {
            "id": "chatcmpl-abc123",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "upstream-model",
            "choices": [],
            "usage": usage,
        },
        chunk=True,
    )


def tool_delta(
    index: int, *, call_id: str | None = None, name: str | None = None, arguments: str = ""
) -> dict[str, Any]:
    fragment: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        fragment.update(id=call_id, type="function")
        fragment["function"]["name"] = name
    return {"tool_calls": [fragment]}


def stream(writer: ResponsesStreamWriter, chunks: list[dict[str, Any]]) -> list[bytes]:
    raw = writer.start()
    for item in chunks:
        raw += writer.feed(item)
    return raw + writer.finish()


# --- request: Responses → chat ----------------------------------------------------------------


def test_instructions_and_string_input_become_system_then_user() -> None:
    body = check_request(
        {"model": "fast", "instructions": "Be terse.", "input": "Hello", "temperature": 0.2}
    )
    out = check_chat_request(chat_request(body))
    assert out == {
        "model": "fast",
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Hello"},
        ],
    }


def test_input_items_become_chat_messages_in_order() -> None:
    body = check_request(
        {
            "model": "fast",
            "input": [
                {"role": "developer", "content": "Answer in French."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {
                            "type": "input_image",
                            "image_url": "https://x.test/a.png",
                            "detail": "low",
                        },
                        {"type": "input_image", "file_id": "file-123", "detail": "auto"},
                        {"type": "input_file", "file_id": "file-456"},
                    ],
                },
                {"role": "user", "content": [{"type": "input_file", "file_id": "file-789"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_1",
                    "status": "completed",
                    "content": [
                        {
                            "type": "output_text",
                            "text": "Let me look.",
                            "annotations": [],
                            "logprobs": [],
                        }
                    ],
                },
                {
                    "type": "function_call",
                    "call_id": "call_1",
                    "name": "get_weather",
                    "arguments": '{"city":"Paris"}',
                },
                {
                    "type": "function_call",
                    "call_id": "call_2",
                    "name": "get_weather",
                    "arguments": '{"city":"Lyon"}',
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [
                        {"type": "input_text", "text": "21"},
                        {"type": "input_text", "text": "C"},
                    ],
                },
                {"type": "item_reference", "id": "msg_old"},
                {
                    "type": "function_call",
                    "call_id": "call_3",
                    "name": "get_weather",
                    "arguments": "{}",
                },
            ],
        }
    )
    messages = check_chat_request(chat_request(body))["messages"]
    assert messages == [
        {"role": "system", "content": "Answer in French."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://x.test/a.png", "detail": "low"},
                },
            ],
        },
        # the user message made only of a file is gone; so is the reasoning item
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                tool_call("call_1", "get_weather", '{"city":"Paris"}'),
                tool_call("call_2", "get_weather", '{"city":"Lyon"}'),
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "21C"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [tool_call("call_3", "get_weather", "{}")],
        },
    ]
    assert input_messages(body) == messages  # no instructions, no history: the same


def test_tools_formats_and_settings_map_to_chat_and_the_rest_is_dropped() -> None:
    body = check_request(
        {
            "model": "standard",
            "input": "Weather in Paris?",
            "tools": [WEATHER_TOOL, {"type": "web_search"}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "parallel_tool_calls": False,
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "answer",
                    "strict": True,
                    "schema": {"type": "object", "properties": {}},
                }
            },
            "reasoning": {"effort": "low"},
            "max_output_tokens": 300,
            "top_p": 0.9,
            "user": "u-1",
            "metadata": {"feature": "chat"},
            "store": False,
            "truncation": "auto",
            "stream": True,
        }
    )
    out = check_chat_request(chat_request(body))
    assert out == {
        "model": "standard",
        "top_p": 0.9,
        "user": "u-1",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "max_tokens": 300,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": WEATHER_TOOL["parameters"],
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {"type": "object", "properties": {}},
                "strict": True,
            },
        },
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert chat_request(body, reasoning=True)["reasoning_effort"] == "low"


def test_choice_modes_json_object_and_hosted_tools_alone() -> None:
    assert (
        chat_request({"input": "x", "tools": [WEATHER_TOOL], "tool_choice": "required"})[
            "tool_choice"
        ]
        == "required"
    )
    only_hosted = chat_request(
        {
            "input": "x",
            "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}],
            "tool_choice": "required",
            "parallel_tool_calls": True,
        }
    )
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & only_hosted.keys()
    assert chat_request({"input": "x", "text": {"format": {"type": "json_object"}}})[
        "response_format"
    ] == {"type": "json_object"}
    assert "response_format" not in chat_request(
        {"input": "x", "text": {"format": {"type": "text"}}}
    )


def test_malformed_input_is_refused_with_its_param() -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_request({"input": [{"role": "robot", "content": "hi"}]})
    assert caught.value.param == "input[0].role"
    with pytest.raises(InvalidRequest) as caught:
        chat_request({"input": 42})
    assert caught.value.param == "input"


def test_history_of_a_previous_response_comes_after_instructions_and_before_input() -> None:
    first_request = {
        "model": "fast",
        "instructions": "Old rules.",
        "input": "Weather in Paris?",
        "tools": [WEATHER_TOOL],
    }
    stored_input = input_messages(first_request)  # what the caller stores (no instructions)
    first = response_from_chat(
        chat_completion(
            "Checking.",
            [tool_call("call_9", "get_weather", '{"city":"Paris"}')],
            finish_reason="tool_calls",
        ),
        request=first_request,
        model="fast",
    )
    history = history_messages(stored_input, first["output"])
    assert history == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [tool_call("call_9", "get_weather", '{"city":"Paris"}')],
        },
    ]
    follow_up = check_request(
        {
            "model": "fast",
            "previous_response_id": first["id"],
            "instructions": "New rules.",
            "input": [{"type": "function_call_output", "call_id": "call_9", "output": "18C"}],
            "tools": [WEATHER_TOOL],
        }
    )
    messages = check_chat_request(chat_request(follow_up, history))["messages"]
    assert messages == [
        {"role": "system", "content": "New rules."},  # the old instructions are not carried
        *history,
        {"role": "tool", "tool_call_id": "call_9", "content": "18C"},
    ]
    # a longer chain: the second turn's stored input is its history plus its own input
    second = response_from_chat(chat_completion("18C in Paris."), request=follow_up, model="fast")
    chain = history_messages(history + input_messages(follow_up), second["output"])
    assert chain[-1] == {"role": "assistant", "content": "18C in Paris."}
    assert len(chain) == 4


# --- answer: chat → Response ------------------------------------------------------------------


def test_text_answer_is_a_complete_openai_response() -> None:
    request = check_request({"model": "fast", "input": "Hi", "metadata": {"feature": "x"}})
    response = response_from_chat(
        chat_completion("Hello there!"),
        request=request,
        model="fast",
        created_at=1_700_000_001,
        response_id="resp_" + "0" * 48,
    )
    parsed = check_response(response)
    assert parsed.output_text == output_text(response) == "Hello there!"
    assert response["id"] == "resp_" + "0" * 48 and response["object"] == "response"
    assert response["status"] == "completed" and response["completed_at"] == 1_700_000_001
    assert response["error"] is None and response["incomplete_details"] is None
    message = response["output"][0]
    assert message["id"].startswith("msg_") and message["status"] == "completed"
    assert message["content"] == [
        {"type": "output_text", "text": "Hello there!", "annotations": [], "logprobs": []}
    ]
    assert response["metadata"] == {"feature": "x"}
    assert response["text"] == {"format": {"type": "text"}}
    assert (response["tool_choice"], response["tools"], response["truncation"]) == (
        "auto",
        [],
        "disabled",
    )
    assert (response["temperature"], response["top_p"], response["parallel_tool_calls"]) == (
        1.0,
        1.0,
        True,
    )
    assert response["reasoning"] == {"effort": None, "summary": None}
    assert response["usage"] == {
        "input_tokens": 12,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 19,
    }


def test_tool_call_answer_gives_one_function_call_item_per_call() -> None:
    request = check_request(
        {
            "model": "fast",
            "input": "Weather?",
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
            "text": {"format": {"type": "text"}},
        }
    )
    response = response_from_chat(
        chat_completion(
            None,
            [
                tool_call("call_a", "get_weather", '{"city":"Paris"}'),
                tool_call("call_b", "get_weather", '{"city":"Rome"}'),
            ],
            finish_reason="tool_calls",
        ),
        request=request,
        model="fast",
    )
    parsed = check_response(response)
    assert parsed.output_text == ""
    assert [(item["type"], item["call_id"], item["arguments"]) for item in response["output"]] == [
        ("function_call", "call_a", '{"city":"Paris"}'),
        ("function_call", "call_b", '{"city":"Rome"}'),
    ]
    assert all(
        item["id"].startswith("fc_") and item["status"] == "completed"
        for item in response["output"]
    )
    assert response["tools"] == [WEATHER_TOOL] and response["tool_choice"] == "required"


def test_length_cutoff_is_an_incomplete_response() -> None:
    request = check_request({"model": "fast", "input": "Tell a story", "max_output_tokens": 16})
    response = response_from_chat(
        chat_completion("Once upon a", finish_reason="length"), request=request, model="fast"
    )
    check_response(response)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"
    assert response["completed_at"] is None and response["max_output_tokens"] == 16


def test_usage_counts_cached_and_reasoning_tokens() -> None:
    response = response_from_chat(
        chat_completion(
            "ok", usage=chat_usage(prompt=2000, completion=300, cached=1536, reasoning=256)
        ),
        request={"model": "fast", "input": "x"},
        model="fast",
    )
    parsed = check_response(response)
    assert parsed.usage is not None
    assert parsed.usage.input_tokens_details.cached_tokens == 1536
    assert parsed.usage.output_tokens_details.reasoning_tokens == 256
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens) == (
        2000,
        300,
        2300,
    )


def test_refusal_becomes_a_refusal_part() -> None:
    completion = chat_completion(None)
    completion["choices"][0]["message"]["refusal"] = "I can't help with that."
    response = response_from_chat(completion, request={"input": "x"}, model="fast")
    check_response(response)
    assert response["output"][0]["content"] == [
        {"type": "refusal", "refusal": "I can't help with that."}
    ]


# --- stream: chat chunks → Responses events ---------------------------------------------------


def test_text_stream_events_in_openai_order_and_the_sdk_assembles_them() -> None:
    request = check_request({"model": "fast", "input": "Hi", "stream": True})
    writer = ResponsesStreamWriter(request, "fast")
    raw = stream(
        writer,
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, finish_reason="stop"),
            usage_chunk(chat_usage()),
        ],
    )
    events = parse_events(raw)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == [] and events[0]["response"]["usage"] is None
    assert events[2]["item"]["content"] == [] and events[2]["item"]["status"] == "in_progress"
    assert events[3]["part"] == {
        "type": "output_text",
        "text": "",
        "annotations": [],
        "logprobs": [],
    }
    assert events[6]["text"] == "Hello"
    final = events[-1]["response"]
    assert final == writer.response and final["status"] == "completed"
    assert output_text(final) == "Hello" and final["usage"]["total_tokens"] == 19
    assert sdk_stream(raw, request).output_text == "Hello"


def test_text_then_two_tool_calls_streamed() -> None:
    request = check_request(
        {"model": "fast", "input": "Weather?", "tools": [WEATHER_TOOL], "stream": True}
    )
    writer = ResponsesStreamWriter(
        request, "fast", response_id="resp_" + "1" * 48, created_at=1_700_000_000
    )
    raw = stream(
        writer,
        [
            chunk({"role": "assistant", "content": "Let me check."}),
            chunk(tool_delta(0, call_id="call_a", name="get_weather")),
            chunk(tool_delta(0, arguments='{"city":')),
            chunk(tool_delta(0, arguments='"Paris"}')),
            chunk(tool_delta(1, call_id="call_b", name="get_weather", arguments='{"city":"Rome"}')),
            chunk({}, finish_reason="tool_calls"),
            usage_chunk(chat_usage()),
        ],
    )
    events = parse_events(raw)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["output_index"] for e in added] == [0, 1, 2]
    assert added[1]["item"] == {
        "id": added[1]["item"]["id"],
        "type": "function_call",
        "status": "in_progress",
        "arguments": "",
        "call_id": "call_a",
        "name": "get_weather",
    }
    done_args = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [(e["name"], e["arguments"], e["output_index"]) for e in done_args] == [
        ("get_weather", '{"city":"Paris"}', 1),
        ("get_weather", '{"city":"Rome"}', 2),
    ]
    assert all(e["item_id"] == added[1]["item"]["id"] for e in events[9:13] if "item_id" in e)
    final = events[-1]["response"]
    assert final["id"] == "resp_" + "1" * 48 and final["created_at"] == 1_700_000_000
    assert [item["type"] for item in final["output"]] == [
        "message",
        "function_call",
        "function_call",
    ]
    assembled = sdk_stream(raw, request)
    assert assembled.output_text == "Let me check."
    calls = [item for item in assembled.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_a", "get_weather", '{"city":"Paris"}'),
        ("call_b", "get_weather", '{"city":"Rome"}'),
    ]


def test_length_cutoff_stream_ends_with_response_incomplete() -> None:
    request = check_request({"model": "fast", "input": "Story", "max_output_tokens": 16})
    writer = ResponsesStreamWriter(request, "fast")
    raw = stream(
        writer,
        [
            chunk({"role": "assistant", "content": "Once upon"}),
            chunk({}, finish_reason="length"),
            usage_chunk(chat_usage(completion=3)),
        ],
    )
    events = parse_events(raw)
    assert events[-1]["type"] == "response.incomplete"
    final = events[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"
    assert [e["item"]["status"] for e in events if e["type"] == "response.output_item.done"] == [
        "incomplete"
    ]
    assert writer.response["usage"]["output_tokens"] == 3


def test_stream_usage_with_cached_and_reasoning_tokens() -> None:
    writer = ResponsesStreamWriter({"model": "fast", "input": "x"}, "fast")
    assert writer.usage == (0, 0, 0, 0)
    raw = stream(
        writer,
        [
            chunk({"content": "ok"}, finish_reason="stop"),
            usage_chunk(chat_usage(prompt=900, completion=40, cached=512, reasoning=32)),
        ],
    )
    events = parse_events(raw)
    assert writer.usage == (900, 40, 512, 32)
    usage = Response.model_validate(events[-1]["response"]).usage
    assert usage is not None
    assert (
        usage.input_tokens_details.cached_tokens,
        usage.output_tokens_details.reasoning_tokens,
    ) == (512, 32)


def test_refusal_streams_as_refusal_events() -> None:
    writer = ResponsesStreamWriter({"input": "x"}, "fast")
    events = parse_events(
        stream(
            writer,
            [
                chunk({"role": "assistant", "refusal": "I can't"}),
                chunk({"refusal": " help."}, finish_reason="stop"),
            ],
        )
    )
    kinds = [e["type"] for e in events]
    assert "response.refusal.delta" in kinds and "response.refusal.done" in kinds
    assert writer.response["output"][0]["content"] == [
        {"type": "refusal", "refusal": "I can't help."}
    ]


def test_failure_mid_stream_is_response_failed_with_what_was_streamed() -> None:
    writer = ResponsesStreamWriter({"model": "fast", "input": "x"}, "fast")
    raw = writer.start() + writer.feed(chunk({"content": "Partial"}))
    raw += writer.fail("upstream_error", "the upstream connection was reset")
    events = parse_events(raw)
    failed = events[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert failed["response"]["error"] == {
        "code": "server_error",
        "message": "the upstream connection was reset",
    }
    assert failed["response"]["output"][0]["status"] == "incomplete"
    assert output_text(failed["response"]) == "Partial"
    assert writer.finished and writer.finish() == [] and writer.feed(chunk({"content": "x"})) == []
    rate_limited = ResponsesStreamWriter({"input": "x"}, "fast")
    events = parse_events(rate_limited.start() + rate_limited.fail("rate_limit_exceeded", "slow"))
    assert events[-1]["response"]["error"]["code"] == "rate_limit_exceeded"
    assert events[-1]["response"]["output"] == []
