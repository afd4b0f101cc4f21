"""The mock answers tools and structured output the way a model does, so that the helpers apps
use (openai-python's `parse`, tool loops, the anthropic SDK's tool_use) work against the demo
config: tool calls whose arguments validate against the tool's schema, honouring `tool_choice`,
streamed as OpenAI streams them; JSON content that validates against `response_format`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from enum import StrEnum
from typing import Any

import anthropic
import jsonschema
import openai
import pytest
from anthropic.types import MessageParam, ToolParam
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ParsedFunctionToolCall,
)
from pydantic import BaseModel, Field

from gateway.providers.mock_json import sample_json
from gateway.server.serving import GatewayServer
from tests.conftest import StartGateway


class Colour(StrEnum):
    red = "red"
    green = "green"


class Address(BaseModel):
    street: str
    postcode: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Field(min_length=2, max_length=12)
    age: int = Field(ge=18, lt=130)
    height_m: float = Field(gt=0.5, le=2.5)
    email: str = Field(json_schema_extra={"format": "email"})
    colour: Colour
    nickname: str | None
    tags: list[str] = Field(min_length=1, max_length=3)
    home: Address
    previous: list[Address]


SCHEMAS: dict[str, Any] = {
    "pydantic-nested": Person.model_json_schema(),
    "strict-object": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "formats": {
        "type": "object",
        "properties": {
            f: {"type": "string", "format": f}
            for f in ("date-time", "date", "time", "uuid", "uri", "ipv4", "ipv6", "hostname")
        },
        "required": ["date-time", "date", "uuid", "uri"],
    },
    "numbers": {
        "type": "object",
        "properties": {
            "step": {"type": "number", "multipleOf": 0.25, "minimum": 1, "maximum": 2},
            "odd": {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 12},
            "count": {"type": ["integer", "null"], "minimum": 0},
        },
        "required": ["step", "odd", "count"],
    },
    "arrays": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "minItems": 4,
        "maxItems": 6,
        "uniqueItems": True,
    },
    "tuple": {"type": "array", "prefixItems": [{"const": "id"}, {"type": "boolean"}]},
    "one-of": {
        "oneOf": [
            {"type": "object", "properties": {"kind": {"const": "a"}}, "required": ["kind"]},
            {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        ]
    },
    "all-of": {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
        ]
    },
    "recursive": {
        "$ref": "#/$defs/node",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["value", "children"],
            }
        },
    },
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_sampled_values_validate_and_are_deterministic(name: str) -> None:
    schema = SCHEMAS[name]
    checker = jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    for seed in range(25):
        value = sample_json(schema, seed)
        checker.validate(value)
        assert sample_json(schema, seed) == value


WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": SCHEMAS["strict-object"],
        "strict": True,
    },
}
SAVE_PERSON: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {"name": "save_person", "parameters": Person.model_json_schema()},
}
TOOLS = [WEATHER, SAVE_PERSON]


def demo_config() -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {"mock": {"type": "mock"}},
        "models": {"mock-model": {"provider": "mock"}},
        "tiers": {"demo": ["mock-model"]},
        "routing": {"default_tier": "demo", "retries": 0},
    }


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> GatewayServer:
    return await start_gateway(demo_config())


@pytest.fixture
async def client(gateway: GatewayServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key="none", max_retries=0
    ) as sdk:
        yield sdk


def ask(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def ask_claude(text: str) -> list[MessageParam]:
    return [{"role": "user", "content": text}]


def schema_of(tool: ChatCompletionFunctionToolParam) -> dict[str, Any]:
    return dict(tool["function"].get("parameters") or {})


def function_calls(message: Any) -> list[ChatCompletionMessageFunctionToolCall]:
    """The message's tool calls, every one a function call (the mock makes no custom ones)."""
    calls = list(message.tool_calls or [])
    assert all(isinstance(call, ChatCompletionMessageFunctionToolCall) for call in calls)
    return calls


async def test_a_tool_call_fits_its_schema_and_follows_the_words_of_the_prompt(
    client: openai.AsyncOpenAI,
) -> None:
    answer = await client.chat.completions.create(
        model="demo", messages=ask("Please save this person"), tools=TOOLS
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = function_calls(choice.message)
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "save_person"
    Person.model_validate_json(call.function.arguments)
    jsonschema.validate(json.loads(call.function.arguments), schema_of(SAVE_PERSON))
    assert answer.usage is not None and answer.usage.completion_tokens > 0

    weather = await client.chat.completions.create(
        model="demo", messages=ask("What's the weather in Oslo?"), tools=TOOLS
    )
    (call,) = function_calls(weather.choices[0].message)
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), schema_of(WEATHER))

    again = await client.chat.completions.create(
        model="demo", messages=ask("What's the weather in Oslo?"), tools=TOOLS
    )
    assert again.choices[0].message.model_dump() == weather.choices[0].message.model_dump()


async def test_tool_choice_is_honoured(client: openai.AsyncOpenAI) -> None:
    prompt = ask("What's the weather in Oslo?")
    none = await client.chat.completions.create(
        model="demo", messages=prompt, tools=TOOLS, tool_choice="none"
    )
    assert none.choices[0].finish_reason == "stop"
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content

    named = await client.chat.completions.create(
        model="demo",
        messages=prompt,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "save_person"}},
    )
    (call,) = function_calls(named.choices[0].message)
    assert call.function.name == "save_person"

    allowed = await client.chat.completions.create(
        model="demo",
        messages=prompt,
        tools=TOOLS,
        tool_choice={
            "type": "allowed_tools",
            "allowed_tools": {
                "mode": "required",
                "tools": [{"type": "function", "function": {"name": "save_person"}}],
            },
        },
    )
    (call,) = function_calls(allowed.choices[0].message)
    assert call.function.name == "save_person"


async def test_a_tool_loop_ends_with_prose_once_the_result_is_in(
    client: openai.AsyncOpenAI,
) -> None:
    messages: list[Any] = list(ask("What's the weather in Oslo?"))
    first = await client.chat.completions.create(model="demo", messages=messages, tools=TOOLS)
    (call,) = function_calls(first.choices[0].message)
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp": 3}'})
    second = await client.chat.completions.create(model="demo", messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    # `required` calls again even after a result.
    forced = await client.chat.completions.create(
        model="demo", messages=messages, tools=TOOLS, tool_choice="required"
    )
    assert forced.choices[0].finish_reason == "tool_calls"


async def test_a_streamed_tool_call_is_the_same_call_in_openai_stream_shape(
    client: openai.AsyncOpenAI,
) -> None:
    prompt = ask("Please save this person")
    whole = await client.chat.completions.create(model="demo", messages=prompt, tools=TOOLS)
    (expected,) = function_calls(whole.choices[0].message)

    stream = await client.chat.completions.create(
        model="demo",
        messages=prompt,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    head = chunks[0].choices[0].delta
    assert head.role == "assistant" and head.tool_calls is not None
    assert head.tool_calls[0].id == expected.id
    assert head.tool_calls[0].function is not None
    assert head.tool_calls[0].function.name == "save_person"
    arguments = ""
    deltas = 0
    for chunk in chunks[1:]:
        for choice in chunk.choices:
            for part in choice.delta.tool_calls or []:
                assert part.index == 0 and part.id is None
                assert part.function is not None and part.function.arguments is not None
                arguments += part.function.arguments
                deltas += 1
            assert choice.delta.content is None
    assert deltas > 1  # the arguments arrive in pieces, as from a model
    assert arguments == expected.function.arguments
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == deltas

    # The SDK's stream helper puts it back together.
    async with client.chat.completions.stream(model="demo", messages=prompt, tools=TOOLS) as helper:
        final = await helper.get_final_completion()
    (rebuilt,) = function_calls(final.choices[0].message)
    assert rebuilt.function.arguments == expected.function.arguments


async def test_parse_gets_an_instance_of_the_pydantic_model(client: openai.AsyncOpenAI) -> None:
    parsed = await client.chat.completions.parse(
        model="demo", messages=ask("Describe someone"), response_format=Person
    )
    person = parsed.choices[0].message.parsed
    assert isinstance(person, Person)
    jsonschema.validate(
        json.loads(parsed.choices[0].message.content or ""), SCHEMAS["pydantic-nested"]
    )

    # A strict function tool, parsed into its arguments by the SDK.
    tool = openai.pydantic_function_tool(Address, name="store_address")
    parsed_call = await client.chat.completions.parse(
        model="demo", messages=ask("Store the address"), tools=[tool]
    )
    (parsed_tool,) = parsed_call.choices[0].message.tool_calls or []
    assert isinstance(parsed_tool, ParsedFunctionToolCall)
    assert isinstance(parsed_tool.function.parsed_arguments, Address)


async def test_json_object_and_truncation(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model="demo", messages=ask("Answer in JSON"), response_format={"type": "json_object"}
    )
    content = json.loads(answer.choices[0].message.content or "")
    assert isinstance(content, dict) and isinstance(content["answer"], str)

    cut = await client.chat.completions.create(
        model="demo", messages=ask("Describe someone"), response_format=_format(), max_tokens=3
    )
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage is not None and cut.usage.completion_tokens == 3

    plain = await client.chat.completions.create(model="demo", messages=ask("Describe someone"))
    with_schema = await client.chat.completions.create(
        model="demo", messages=ask("Describe someone"), response_format=_format()
    )
    assert plain.usage is not None and with_schema.usage is not None
    assert with_schema.usage.prompt_tokens > plain.usage.prompt_tokens  # the schema counts


def _format() -> Any:
    return {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": Person.model_json_schema()},
    }


async def test_the_anthropic_sdk_gets_a_tool_use_block_from_the_mock(
    gateway: GatewayServer,
) -> None:
    tool: ToolParam = {
        "name": "save_person",
        "description": "Save a person",
        "input_schema": Person.model_json_schema(),
    }
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="none", max_retries=0
    ) as claude:
        message = await claude.messages.create(
            model="demo",
            max_tokens=1024,
            messages=ask_claude("Please save this person"),
            tools=[tool],
        )
        assert message.stop_reason == "tool_use"
        (block,) = [b for b in message.content if b.type == "tool_use"]
        assert block.name == "save_person"
        Person.model_validate(block.input)

        async with claude.messages.stream(
            model="demo",
            max_tokens=1024,
            messages=ask_claude("Please save this person"),
            tools=[tool],
        ) as stream:
            final = await stream.get_final_message()
        (streamed,) = [b for b in final.content if b.type == "tool_use"]
        assert streamed.input == block.input and streamed.id == block.id

        none = await claude.messages.create(
            model="demo",
            max_tokens=1024,
            messages=ask_claude("Please save this person"),
            tools=[tool],
            tool_choice={"type": "none"},
        )
        assert none.stop_reason == "end_turn" and none.content[0].type == "text"
