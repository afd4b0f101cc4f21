"""Legacy Completions served by a chat upstream: request, answer and stream translation.

Every answer and stream chunk is checked against OpenAI's published schema (vendored in
tests/data/openapi), by the openai SDK's `Completion` type, and, for streams, by the SDK's
own client reading our bytes (an in-memory transport, no network).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import openai
import orjson
import pytest
from openai.types import Completion

from gateway.ingress.completions.translate import (
    CompletionsStreamWriter,
    InvalidPrompt,
    chat_request,
    completion_from_chat,
    merge_completions,
    prompts,
)

SCHEMAS = Path(__file__).parent / "data" / "openapi"


@cache
def validator(document: str, name: str, *, stream_chunk: bool = False) -> Any:
    defs = json.loads((SCHEMAS / document).read_text())["$defs"]
    if stream_chunk:
        # The spec says streamed chunks have the answer's shape, but OpenAI streams
        # `"finish_reason": null` until a choice's last chunk (the SDK builds stream chunks
        # without validating them). Streamed chunks are checked with that one allowance.
        defs = copy.deepcopy(defs)
        choice = defs[name]["properties"]["choices"]["items"]["properties"]
        choice["finish_reason"] = {"anyOf": [choice["finish_reason"], {"type": "null"}]}
    return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": defs})


def check_completion(answer: dict[str, Any]) -> Completion:
    validator("completions.json", "CreateCompletionResponse").validate(answer)
    return Completion.model_validate(answer)


def check_request(body: dict[str, Any]) -> dict[str, Any]:
    validator("completions.json", "CreateCompletionRequest").validate(body)
    return body


def check_chat_request(body: dict[str, Any]) -> dict[str, Any]:
    validator("chat.json", "CreateChatCompletionRequest").validate(body)
    return body


def check_chat(completion: dict[str, Any], *, chunk: bool = False) -> dict[str, Any]:
    name = "CreateChatCompletionStreamResponse" if chunk else "CreateChatCompletionResponse"
    validator("chat.json", name).validate(completion)
    return completion


def parse_stream(raw: list[bytes]) -> list[dict[str, Any]]:
    """Each event one `data:` line; the last `data: [DONE]`; every chunk schema-valid."""
    assert raw[-1] == b"data: [DONE]\n\n"
    chunks = []
    for event in raw[:-1]:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        assert event.count(b"\n") == 2
        data = orjson.loads(event[len(b"data: ") : -2])
        validator("completions.json", "CreateCompletionResponse", stream_chunk=True).validate(data)
        chunks.append(data)
    return chunks


def sdk_stream(raw: list[bytes]) -> list[Completion]:
    """The openai client's `completions.create(stream=True)` reading our bytes."""

    def answer(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(raw)
        )

    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://gateway.invalid/v1",
        http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
    )
    return list(client.completions.create(model="fast", prompt="x", stream=True))


def chat_usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def chat_completion(
    texts: list[str],
    *,
    finish_reason: str = "stop",
    usage: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return check_chat(
        {
            "id": "chatcmpl-XyZ123",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "upstream-model",
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
                for i, text in enumerate(texts)
            ],
            "usage": usage or chat_usage(5, 3),
            **extra,
        }
    )


def chunk(
    content: str | None = None,
    finish_reason: str | None = None,
    *,
    index: int = 0,
    role: bool = False,
    chat_id: str = "chatcmpl-XyZ123",
) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant"} if role else {}
    if content is not None:
        delta["content"] = content
    return check_chat(
        {
            "id": chat_id,
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "upstream-model",
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        },
        chunk=True,
    )


def usage_chunk(usage: dict[str, Any], chat_id: str = "chatcmpl-XyZ123") -> dict[str, Any]:
    return check_chat(
        {
            "id": chat_id,
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "upstream-model",
            "choices": [],
            "usage": usage,
        },
        chunk=True,
    )


# --- request ----------------------------------------------------------------------------------


def test_prompts_string_list_and_refusals() -> None:
    assert prompts({"prompt": "Say hi"}) == ["Say hi"]
    assert prompts({"prompt": ["one", "two"]}) == ["one", "two"]
    assert prompts({"prompt": ""}) == [""]
    bad_bodies: list[dict[str, Any]] = [
        {},
        {"prompt": [1, 2]},
        {"prompt": [[1, 2]]},
        {"prompt": []},
    ]
    for bad in bad_bodies:
        with pytest.raises(InvalidPrompt) as caught:
            prompts(bad)
        assert caught.value.param == "prompt"


def test_one_prompt_becomes_one_user_message_with_the_legacy_defaults() -> None:
    body = check_request(
        {
            "model": "fast",
            "prompt": ["Say hi", "Say bye"],
            "suffix": "!",
            "echo": True,
            "logprobs": 2,
            "best_of": 3,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["\n"],
            "n": 2,
            "user": "u-1",
            "seed": 7,
        }
    )
    out = check_chat_request(chat_request(body, "Say bye"))
    assert out == {
        "model": "fast",
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n"],
        "n": 2,
        "user": "u-1",
        "seed": 7,
        "messages": [{"role": "user", "content": "Say bye"}],
        "max_tokens": 16,
    }


def test_max_tokens_and_stream_options() -> None:
    streamed = chat_request({"model": "m", "prompt": "x", "stream": True, "max_tokens": 200}, "x")
    assert streamed["max_tokens"] == 200
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}
    assert "max_tokens" not in chat_request({"model": "m", "prompt": "x", "max_tokens": None}, "x")


# --- answer -----------------------------------------------------------------------------------


def test_chat_answer_becomes_a_text_completion() -> None:
    answer = completion_from_chat(chat_completion(["Hello!"]), model="fast")
    parsed = check_completion(answer)
    assert answer == {
        "id": "cmpl-XyZ123",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "fast",
        "choices": [{"text": "Hello!", "index": 0, "logprobs": None, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": 3,
            "total_tokens": 8,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }
    assert "system_fingerprint" not in answer and parsed.choices[0].text == "Hello!"
    with_fingerprint = completion_from_chat(
        chat_completion(["x"], system_fingerprint="fp_123"), model="fast"
    )
    assert check_completion(with_fingerprint).system_fingerprint == "fp_123"


def test_finish_reasons_the_legacy_api_knows() -> None:
    for chat_reason, legacy in (
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("tool_calls", "stop"),
    ):
        answer = completion_from_chat(chat_completion(["x"], finish_reason=chat_reason), model="m")
        assert check_completion(answer).choices[0].finish_reason == legacy


def test_list_prompt_answers_merge_in_order_with_usage_summed() -> None:
    n = 2  # body: {"prompt": ["Say hi", "Say bye"], "n": 2}
    answers = [
        completion_from_chat(
            chat_completion(texts, usage=chat_usage(prompt, 4, cached)),
            model="fast",
            index_offset=i * n,
        )
        for i, (texts, prompt, cached) in enumerate(
            [(["hi", "hello"], 5, 2), (["bye", "ciao"], 6, 0)]
        )
    ]
    assert [c["index"] for c in answers[1]["choices"]] == [2, 3]
    merged = merge_completions(answers)
    parsed = check_completion(merged)
    assert [(c.index, c.text) for c in parsed.choices] == [
        (0, "hi"),
        (1, "hello"),
        (2, "bye"),
        (3, "ciao"),
    ]
    assert merged["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 8,
        "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    assert merged["id"] == answers[0]["id"]


# --- stream -----------------------------------------------------------------------------------


def test_stream_becomes_text_completion_chunks_then_usage_then_done() -> None:
    writer = CompletionsStreamWriter("fast")
    raw: list[bytes] = []
    for item in (
        chunk("", role=True),
        chunk("Hel"),
        chunk("lo"),
        chunk(finish_reason="stop"),
        usage_chunk(chat_usage(5, 2)),
    ):
        raw += writer.feed(item)
    raw += writer.finish(include_usage=True)
    chunks = parse_stream(raw)
    assert [c["choices"] for c in chunks] == [
        [{"text": "Hel", "index": 0, "logprobs": None, "finish_reason": None}],
        [{"text": "lo", "index": 0, "logprobs": None, "finish_reason": None}],
        [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}],
        [],
    ]
    assert {c["id"] for c in chunks} == {"cmpl-XyZ123"}
    assert all(c["object"] == "text_completion" and c["model"] == "fast" for c in chunks)
    assert chunks[-1]["usage"]["total_tokens"] == 7
    assert Completion.model_validate(chunks[2]).choices[0].finish_reason == "stop"
    read = sdk_stream(raw)
    assert "".join(c.choices[0].text for c in read if c.choices) == "Hello"
    assert read[-1].usage is not None and read[-1].usage.completion_tokens == 2


def test_stream_without_usage_ends_with_done_only() -> None:
    writer = CompletionsStreamWriter("fast")
    raw = writer.feed(chunk("Hi", "length")) + writer.feed(usage_chunk(chat_usage(1, 1)))
    raw += writer.finish(include_usage=False)
    chunks = parse_stream(raw)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == ["length"]
    assert all("usage" not in c for c in chunks)


def test_list_prompt_streams_share_one_id_and_one_summed_usage() -> None:
    writer = CompletionsStreamWriter("fast")
    raw: list[bytes] = []
    for prompt_index, (chat_id, text) in enumerate([("chatcmpl-A", "one"), ("chatcmpl-B", "two")]):
        for item in (
            chunk(text, chat_id=chat_id),
            chunk(finish_reason="stop", chat_id=chat_id),
            usage_chunk(chat_usage(3, 1), chat_id=chat_id),
        ):
            raw += writer.feed(item, index_offset=prompt_index)
    raw += writer.finish(include_usage=True)
    chunks = parse_stream(raw)
    assert {c["id"] for c in chunks} == {"cmpl-A"}
    assert [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in chunks[:-1]] == [
        (0, "one"),
        (0, ""),
        (1, "two"),
        (1, ""),
    ]
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 6,
        "completion_tokens": 2,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    texts: dict[int, str] = {}
    for read in sdk_stream(raw):
        for choice in read.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "one", 1: "two"}
