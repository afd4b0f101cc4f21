"""`POST /v1/responses` and `POST /v1/completions` with the real Node clients (tests/node/), each
through a native model and translated ones.

- openai-node: `client.responses.create` streamed and not (deltas joined equal the final
  response's text), a function tool round trip continued with `previous_response_id`, a
  conversation carried across providers by `previous_response_id` (and `retrieve`/`delete`),
  `text.format` JSON schema output validated against the schema, and `client.completions.create`
  streamed and not; through the fake OpenAI's own `/v1/responses` (`responses: true`), a
  chat-only fake OpenAI model, the fake Anthropic and the mock.
- The Vercel AI SDK's default provider (`createOpenAI(...)(model)`, which calls
  `/v1/responses`): `generateText`, `streamText`, a multi-step tool loop (`tool`, `stopWhen`),
  `generateObject` with a zod schema, and a conversation continued with the earlier result's
  `response.messages`, which the SDK sends as `item_reference`s to the items the gateway made,
  and with `providerOptions.openai.previousResponseId`.

Each test checks what the client returns and what the upstream received.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text, tool_use
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.node_clients import run_node
from tests.test_responses_gateway import responses_config

TIMEOUT_S = 60.0

# The tiers of `responses_config`: the fake OpenAI's /v1/responses, a chat-only fake OpenAI
# model, the fake Anthropic, the mock.
NATIVE, CHAT, CLAUDE, MOCK = "native", "fast", "claude", "demo"

CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
    "additionalProperties": False,
}
CITY = {"name": "Oslo", "population": 709000}
CITY_WORDS = ['{"name":"Oslo",', '"population":709000}']

OPENAI_NODE = """
import OpenAI from "openai";
const client = new OpenAI({
  baseURL: process.env.GATEWAY_URL + "/v1",
  apiKey: process.env.GATEWAY_KEY,
  maxRetries: 0,
  timeout: 15000,
});
const TIERS = JSON.parse(process.env.TIERS ?? "[]");
const out = {};
"""

AI_SDK = """
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText, generateObject, tool, stepCountIs } from "ai";
import { z } from "zod";
const openai = createOpenAI({
  baseURL: process.env.GATEWAY_URL + "/v1",
  apiKey: process.env.GATEWAY_KEY,
});
const TIERS = JSON.parse(process.env.TIERS ?? "[]");
const common = { maxRetries: 0, abortSignal: AbortSignal.timeout(15000) };
const out = {};
"""

PRINT = "\nconsole.log(JSON.stringify(out));\n"


def native_completions_config(openai_url: str, anthropic_url: str) -> dict[str, Any]:
    """`responses_config`, plus a model whose provider serves `/v1/completions` itself."""
    raw = responses_config(openai_url, anthropic_url)
    raw["providers"]["legacy"] = {
        "type": "openai",
        "base_url": openai_url,
        "api_key": "sk-legacy",
        "completions": True,
    }
    raw["models"]["legacy-model"] = {"provider": "legacy", "model": "legacy-id"}
    raw["tiers"]["legacy"] = ["legacy-model"]
    raw["plans"]["pro"]["tiers"] = list(raw["tiers"])
    return raw


@pytest.fixture
async def claude_upstream() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gateway(
    upstream: FakeOpenAI, claude_upstream: FakeAnthropic, start_gateway: StartGateway
) -> GatewayServer:
    return await start_gateway(native_completions_config(upstream.url, claude_upstream.url))


async def node(gateway: GatewayServer, script: str, **env: Any) -> dict[str, Any]:
    """Run `script` (after its prelude) with GATEWAY_URL, GATEWAY_KEY and `env` as JSON."""
    variables = {"GATEWAY_URL": gateway.url, "GATEWAY_KEY": APP_KEY}
    variables |= {name: json.dumps(value) for name, value in env.items()}
    return await run_node(script + PRINT, variables, timeout_s=TIMEOUT_S)


def paths(upstream: FakeOpenAI) -> list[str]:
    return [received.path for received in upstream.requests]


# --- openai-node: client.responses ---------------------------------------------------------


async def test_openai_node_responses_create_and_stream(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    script = (
        OPENAI_NODE
        + """
    for (const tier of TIERS) {
      const ask = {
        model: tier, input: "Say hi", instructions: "Be brief.", max_output_tokens: 64,
      };
      const made = await client.responses.create(ask);
      const stream = await client.responses.create({ ...ask, stream: true });
      const kinds = [];
      const deltas = [];
      let final = null;
      for await (const event of stream) {
        kinds.push(event.type);
        if (event.type === "response.output_text.delta") deltas.push(event.delta);
        if (event.type === "response.completed") final = event.response;
      }
      out[tier] = {
        id: made.id, status: made.status, text: made.output_text, model: made.model,
        usage: made.usage, kinds, deltas, finalId: final.id, finalStatus: final.status,
        finalText: final.output.filter((i) => i.type === "message")
          .flatMap((i) => i.content).map((p) => p.text).join(""),
        finalUsage: final.usage,
      };
    }
    """
    )
    result = await node(gateway, script, TIERS=[NATIVE, CHAT, CLAUDE, MOCK])
    expected = {
        NATIVE: "Hello from the upstream",
        CHAT: "Hello from the upstream",
        CLAUDE: "Hello from Claude",
    }
    for tier, got in result.items():
        assert got["id"].startswith("resp") and got["status"] == "completed", tier
        assert got["text"] == expected.get(tier, got["text"]) and got["text"], tier
        assert got["usage"]["output_tokens"] > 0, tier
        assert got["kinds"][:2] == ["response.created", "response.in_progress"], tier
        assert got["kinds"][-1] == "response.completed", tier
        assert got["finalStatus"] == "completed" and got["finalId"] != got["id"], tier
        assert len(got["deltas"]) >= 1 and "".join(got["deltas"]) == got["finalText"], tier
        assert got["finalText"] == got["text"], tier  # same prompt, same answer
        assert got["finalUsage"]["output_tokens"] == got["usage"]["output_tokens"], tier
    assert len(result[MOCK]["deltas"]) > 1  # the mock streams word by word
    assert result[CHAT]["model"] == CHAT
    # Two requests each: the native tier's as sent, the chat tier's translated.
    native, native_stream, chat, chat_stream = upstream.requests
    assert [native.path, native_stream.path] == ["/v1/responses"] * 2
    assert native.body["model"] == "gpt-native-id" and native.body["instructions"] == "Be brief."
    assert native_stream.body["stream"] is True
    assert [chat.path, chat_stream.path] == ["/v1/chat/completions"] * 2
    assert chat.body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert chat.body["max_tokens"] == 64
    assert chat_stream.body["stream"] is True
    assert [r.body.get("stream", False) for r in claude_upstream.requests] == [False, True]
    assert claude_upstream.requests[0].body["system"] == "Be brief."


WEATHER_TOOL: dict[str, Any] = {
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
OSLO_CALL = {"id": "call_oslo", "name": "get_weather", "arguments": '{"city":"Oslo"}'}


async def test_openai_node_function_tool_round_trip(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    """Each tier twice: the call asked for without a stream, then with one (its arguments
    from the events); the tool's output goes back with `previous_response_id`."""
    for _ in range(4):  # native twice, then chat twice: a call, then the answer
        upstream.next(Behaviour(words=[], tool_calls=[OSLO_CALL]), Behaviour(words=["Cold"]))
    for _ in range(2):
        claude_upstream.next(
            Reply(
                content=[tool_use("toolu_oslo", "get_weather", {"city": "Oslo"})],
                stop_reason="tool_use",
            ),
            Reply(content=[text("Cold")]),
        )
    script = (
        OPENAI_NODE
        + """
    const tools = [JSON.parse(process.env.TOOL)];
    async function call(tier, stream) {
      const ask = { model: tier, input: "Weather in Oslo?", tools, tool_choice: "auto" };
      if (!stream) {
        const first = await client.responses.create(ask);
        return { id: first.id, items: first.output };
      }
      const events = await client.responses.create({ ...ask, stream: true });
      let id = null;
      let argsDone = null;
      const argDeltas = [];
      const items = [];
      for await (const event of events) {
        if (event.type === "response.created") id = event.response.id;
        if (event.type === "response.function_call_arguments.delta") argDeltas.push(event.delta);
        if (event.type === "response.function_call_arguments.done") argsDone = event.arguments;
        if (event.type === "response.output_item.done") items.push(event.item);
      }
      return { id, items, argDeltas, argsDone };
    }
    for (const tier of TIERS) {
      out[tier] = [];
      for (const stream of [false, true]) {
        const first = await call(tier, stream);
        const fc = first.items.find((i) => i.type === "function_call");
        const second = await client.responses.create({
          model: tier,
          previous_response_id: first.id,
          input: [{ type: "function_call_output", call_id: fc.call_id, output: '{"c": -3}' }],
          tools,
        });
        out[tier].push({ first, fc, second: { text: second.output_text,
          previous: second.previous_response_id, kinds: second.output.map((i) => i.type) } });
      }
    }
    """
    )
    result = await node(gateway, script, TIERS=[NATIVE, CHAT, CLAUDE, MOCK], TOOL=WEATHER_TOOL)
    for tier, runs in result.items():
        for streamed, run in zip((False, True), runs, strict=True):
            fc = run["fc"]
            assert fc["name"] == "get_weather", (tier, streamed)
            arguments = json.loads(fc["arguments"])
            jsonschema.validate(arguments, WEATHER_TOOL["parameters"])
            if tier != MOCK:
                assert arguments == {"city": "Oslo"}, tier
                assert run["second"]["text"] == "Cold", tier
            assert run["second"]["kinds"] == ["message"], (tier, streamed)
            assert run["second"]["text"], (tier, streamed)
            assert run["second"]["previous"] == run["first"]["id"], (tier, streamed)
            if streamed:
                assert run["first"]["argsDone"] == fc["arguments"], tier
                assert "".join(run["first"]["argDeltas"]) == fc["arguments"], tier
    native_calls = [r for r in upstream.requests if r.path == "/v1/responses"]
    chat_calls = [r for r in upstream.requests if r.path == "/v1/chat/completions"]
    assert len(native_calls) == len(chat_calls) == 4
    for first, second in (native_calls[:2], native_calls[2:]):
        # The native provider keeps its responses: the id goes through, the input as sent.
        assert first.body["tools"] == [WEATHER_TOOL]
        assert second.body["previous_response_id"].startswith("resp_fake")
        assert second.body["input"] == [
            {"type": "function_call_output", "call_id": "call_oslo", "output": '{"c": -3}'}
        ]
    for first, second in (chat_calls[:2], chat_calls[2:]):
        assert first.body["tools"][0]["function"]["name"] == "get_weather"
        assert first.body["tool_choice"] == "auto"
        messages = second.body["messages"]
        assert messages[0] == {"role": "user", "content": "Weather in Oslo?"}
        assert messages[1]["tool_calls"][0]["id"] == "call_oslo"
        assert messages[2] == {"role": "tool", "tool_call_id": "call_oslo", "content": '{"c": -3}'}
    for answered in (claude_upstream.requests[1], claude_upstream.requests[3]):
        assert answered.body["messages"] == [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": [tool_use("toolu_oslo", "get_weather", {"city": "Oslo"})],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_oslo", "content": '{"c": -3}'}
                ],
            },
        ]


async def test_openai_node_previous_response_id_across_providers(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    """One conversation: native, native again (the id passes through), the chat-only model,
    Anthropic, the mock, then back to native (which never saw the middle turns)."""
    upstream.next(
        Behaviour(words=["First"]),
        Behaviour(words=["Second"]),
        Behaviour(words=["Third"]),
        Behaviour(words=["Sixth"]),
    )
    claude_upstream.next(Reply(content=[text("Fourth")]))
    script = (
        OPENAI_NODE
        + """
    const turns = [];
    let previous = undefined;
    for (const [i, tier] of TIERS.entries()) {
      const made = await client.responses.create({
        model: tier, input: `Turn ${i + 1}`, previous_response_id: previous,
      });
      turns.push({ id: made.id, text: made.output_text, previous: made.previous_response_id });
      previous = made.id;
    }
    const got = await client.responses.retrieve(turns[3].id);
    out.turns = turns;
    out.retrieved = { id: got.id, text: got.output_text };
    out.deleted = await client.responses.delete(turns[3].id);
    try {
      await client.responses.retrieve(turns[3].id);
      out.afterDelete = "found";
    } catch (error) {
      out.afterDelete = error.status;
    }
    """
    )
    result = await node(gateway, script, TIERS=[NATIVE, NATIVE, CHAT, CLAUDE, MOCK, NATIVE])
    turns = result["turns"]
    texts = [turn["text"] for turn in turns]
    assert texts[:4] == ["First", "Second", "Third", "Fourth"] and texts[5] == "Sixth"
    assert texts[4]  # the mock's words
    assert turns[0]["previous"] is None
    assert [t["previous"] for t in turns[1:]] == [t["id"] for t in turns[:-1]]
    assert result["retrieved"] == {"id": turns[3]["id"], "text": "Fourth"}
    assert result["deleted"] == {
        "id": turns[3]["id"],
        "object": "response.deleted",
        "deleted": True,
    }
    assert result["afterDelete"] == 404
    first, second, third, sixth = upstream.requests
    assert "previous_response_id" not in first.body
    assert second.body["previous_response_id"] == turns[0]["id"]  # the provider keeps it
    assert second.body["input"] == "Turn 2"
    assert third.body["messages"] == [
        {"role": "user", "content": "Turn 1"},
        {"role": "assistant", "content": "First"},
        {"role": "user", "content": "Turn 2"},
        {"role": "assistant", "content": "Second"},
        {"role": "user", "content": "Turn 3"},
    ]
    assert claude_upstream.last_body["messages"] == [
        *third.body["messages"],
        {"role": "assistant", "content": "Third"},
        {"role": "user", "content": "Turn 4"},
    ]
    # The native provider never saw turns 3 to 5: every turn goes as input items.
    assert "previous_response_id" not in sixth.body
    sent = [
        (
            item["role"],
            item["content"] if isinstance(item["content"], str) else item["content"][0]["text"],
        )
        for item in sixth.body["input"]
    ]
    assert sent == [
        ("user", "Turn 1"),
        ("assistant", "First"),
        ("user", "Turn 2"),
        ("assistant", "Second"),
        ("user", "Turn 3"),
        ("assistant", "Third"),
        ("user", "Turn 4"),
        ("assistant", "Fourth"),
        ("user", "Turn 5"),
        ("assistant", texts[4]),
        ("user", "Turn 6"),
    ]


async def test_openai_node_json_schema_output(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    upstream.next(Behaviour(words=CITY_WORDS), Behaviour(words=CITY_WORDS))
    claude_upstream.next(
        Reply(content=[tool_use("toolu_city", "city", CITY)], stop_reason="tool_use")
    )
    script = (
        OPENAI_NODE
        + """
    const format = { type: "json_schema", name: "city", strict: true,
                     schema: JSON.parse(process.env.SCHEMA) };
    for (const tier of TIERS) {
      const made = await client.responses.create({
        model: tier, input: "A city, as JSON", text: { format },
      });
      out[tier] = { text: made.output_text, format: made.text.format, status: made.status };
    }
    """
    )
    result = await node(gateway, script, TIERS=[NATIVE, CHAT, CLAUDE, MOCK], SCHEMA=CITY_SCHEMA)
    for tier, got in result.items():
        assert got["status"] == "completed", tier
        value = json.loads(got["text"])
        jsonschema.validate(value, CITY_SCHEMA)
        if tier != MOCK:
            assert value == CITY, tier
    for tier in (CHAT, CLAUDE, MOCK):  # translated: the format is echoed as OpenAI does
        assert result[tier]["format"]["type"] == "json_schema", tier
        assert result[tier]["format"]["name"] == "city", tier
    native, chat = upstream.requests
    assert native.body["text"]["format"]["schema"] == CITY_SCHEMA
    assert chat.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True},
    }
    # Anthropic: a forced tool stands for the schema.
    assert claude_upstream.last_body["tool_choice"] == {
        "type": "tool",
        "name": "city",
        "disable_parallel_tool_use": True,
    }
    assert claude_upstream.last_body["tools"][0]["input_schema"] == CITY_SCHEMA


# --- openai-node: client.completions -------------------------------------------------------


async def test_openai_node_completions(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    upstream.next(
        Behaviour(words=["Once", " upon"], prompt_tokens=3),
        Behaviour(words=["Once", " upon"], prompt_tokens=3),
        Behaviour(words=["A", " time"], prompt_tokens=4),
        Behaviour(words=["A", " time"], prompt_tokens=4),
    )
    script = (
        OPENAI_NODE
        + """
    for (const tier of TIERS) {
      const ask = { model: tier, prompt: "Tell me a story", max_tokens: 8 };
      const made = await client.completions.create(ask);
      const stream = await client.completions.create({
        ...ask, stream: true, stream_options: { include_usage: true },
      });
      const pieces = [];
      let finish = null;
      let usage = null;
      for await (const chunk of stream) {
        for (const choice of chunk.choices) {
          pieces.push(choice.text);
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        if (chunk.usage) usage = chunk.usage;
      }
      out[tier] = {
        object: made.object, text: made.choices[0].text, finish: made.choices[0].finish_reason,
        usage: made.usage, streamed: pieces.join(""), streamFinish: finish, streamUsage: usage,
        count: made.choices.length,
      };
    }
    """
    )
    result = await node(gateway, script, TIERS=["legacy", CHAT, CLAUDE, MOCK])
    for tier, got in result.items():
        assert got["object"] == "text_completion" and got["count"] == 1, tier
        assert got["text"] and got["streamed"] == got["text"], tier
        assert got["streamFinish"] in ("stop", "length"), tier
        assert got["usage"]["completion_tokens"] > 0, tier
        assert got["streamUsage"]["completion_tokens"] == got["usage"]["completion_tokens"], tier
    assert result["legacy"]["text"] == "Once upon"
    assert result[CHAT]["text"] == "A time"
    assert result[CLAUDE]["text"] == "Hello from Claude"
    assert result[CHAT]["usage"]["prompt_tokens"] == 4
    legacy, legacy_stream, chat, chat_stream = upstream.requests
    assert [legacy.path, legacy_stream.path] == ["/v1/completions"] * 2
    assert legacy.body == {"model": "legacy-id", "prompt": "Tell me a story", "max_tokens": 8}
    assert [chat.path, chat_stream.path] == ["/v1/chat/completions"] * 2
    assert chat.body["messages"] == [{"role": "user", "content": "Tell me a story"}]
    assert chat_stream.body["stream"] is True
    assert claude_upstream.last_body["messages"] == [{"role": "user", "content": "Tell me a story"}]


# --- the Vercel AI SDK's default OpenAI provider (`openai(model)`: /v1/responses) ----------


async def test_ai_sdk_generate_and_stream_text(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    script = (
        AI_SDK
        + """
    for (const tier of TIERS) {
      const made = await generateText({
        model: openai(tier), system: "Be brief.", prompt: "Say hi", ...common,
      });
      const streamed = streamText({
        model: openai(tier), system: "Be brief.", prompt: "Say hi", ...common,
      });
      const pieces = [];
      for await (const piece of streamed.textStream) pieces.push(piece);
      out[tier] = {
        text: made.text, finish: made.finishReason, usage: made.usage,
        responseId: made.providerMetadata?.openai?.responseId,
        pieces, streamedText: await streamed.text, streamedUsage: await streamed.usage,
        streamedFinish: await streamed.finishReason,
      };
    }
    """
    )
    result = await node(gateway, script, TIERS=[NATIVE, CHAT, CLAUDE, MOCK])
    for tier, got in result.items():
        assert got["text"], tier
        assert got["finish"] == got["streamedFinish"] == "stop", tier
        assert got["usage"]["outputTokens"] > 0 and got["usage"]["inputTokens"] > 0, tier
        assert got["responseId"].startswith("resp"), tier
        assert "".join(got["pieces"]) == got["streamedText"] == got["text"], tier
        assert got["streamedUsage"]["outputTokens"] == got["usage"]["outputTokens"], tier
    assert result[NATIVE]["text"] == result[CHAT]["text"] == "Hello from the upstream"
    assert result[CLAUDE]["text"] == "Hello from Claude"
    native, _native_stream, chat, chat_stream = upstream.requests
    assert native.path == "/v1/responses" and native.body["model"] == "gpt-native-id"
    assert chat.path == "/v1/chat/completions"
    assert chat.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
    ]
    assert (
        chat_stream.body["stream"] is True and chat_stream.body["messages"] == chat.body["messages"]
    )
    assert claude_upstream.requests[0].body["system"] == "Be brief."


async def test_ai_sdk_multi_step_tool_loop(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    """`tool` with `execute` and `stopWhen`: the SDK runs the tool and sends a second step
    with the call and its output, which every kind of model gets in its own form."""
    for _ in range(2):  # native, then chat: a call, then the answer
        upstream.next(Behaviour(words=[], tool_calls=[OSLO_CALL]), Behaviour(words=["Cold"]))
    claude_upstream.next(
        Reply(
            content=[tool_use("toolu_oslo", "get_weather", {"city": "Oslo"})],
            stop_reason="tool_use",
        ),
        Reply(content=[text("Cold")]),
    )
    script = (
        AI_SDK
        + """
    const calls = [];
    const tools = {
      get_weather: tool({
        description: "Weather for a city",
        inputSchema: z.object({ city: z.string() }),
        execute: async ({ city }) => { calls.push(city); return { c: -3 }; },
      }),
    };
    for (const tier of TIERS) {
      const made = await generateText({
        model: openai(tier), prompt: "Weather in Oslo?", tools, stopWhen: stepCountIs(3),
        ...common,
      });
      out[tier] = { text: made.text, steps: made.steps.length,
                    firstFinish: made.steps[0].finishReason };
    }
    out.calls = calls;
    """
    )
    result = await node(gateway, script, TIERS=[NATIVE, CHAT, CLAUDE, MOCK])
    calls = result.pop("calls")
    assert calls[:3] == ["Oslo"] * 3 and len(calls) == 4  # the mock picks its own city
    for tier, got in result.items():
        assert got["steps"] == 2 and got["firstFinish"] == "tool-calls", tier
        assert got["text"], tier
    assert result[NATIVE]["text"] == result[CHAT]["text"] == result[CLAUDE]["text"] == "Cold"
    native_first, native_second, chat_first, chat_second = upstream.requests
    assert native_first.path == native_second.path == "/v1/responses"
    # The SDK sends its function calls back as items (text as references; see below).
    calls_sent = [i for i in native_second.body["input"] if i.get("type") == "function_call"]
    assert [c["call_id"] for c in calls_sent] == ["call_oslo"]
    assert chat_second.path == "/v1/chat/completions"
    messages = chat_second.body["messages"]
    assert messages[0] == {"role": "user", "content": "Weather in Oslo?"}
    assert messages[1]["role"] == "assistant"
    assert messages[1]["tool_calls"][0]["id"] == "call_oslo"
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert messages[2]["role"] == "tool" and messages[2]["tool_call_id"] == "call_oslo"
    assert json.loads(messages[2]["content"]) == {"c": -3}
    claude_second = claude_upstream.requests[1].body["messages"]
    assert claude_second[1]["content"][0]["type"] == "tool_use"
    assert claude_second[2]["content"][0]["type"] == "tool_result"
    assert chat_first.body["tools"][0]["function"]["name"] == "get_weather"


async def test_ai_sdk_generate_object(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    upstream.next(Behaviour(words=CITY_WORDS), Behaviour(words=CITY_WORDS))
    # The SDK names its schema "response"; for Anthropic it becomes a forced tool of that name.
    claude_upstream.next(
        Reply(content=[tool_use("toolu_city", "response", CITY)], stop_reason="tool_use")
    )
    script = (
        AI_SDK
        + """
    const schema = z.object({ name: z.string(), population: z.number().int() });
    for (const tier of TIERS) {
      const made = await generateObject({
        model: openai(tier), schema, prompt: "A city, as JSON", ...common,
      });
      out[tier] = { object: made.object, finish: made.finishReason };
    }
    """
    )
    result = await node(gateway, script, TIERS=[NATIVE, CHAT, CLAUDE, MOCK])
    for tier, got in result.items():
        jsonschema.validate(got["object"], CITY_SCHEMA)
        if tier != MOCK:
            assert got["object"] == CITY, tier
    native, chat = upstream.requests
    assert native.body["text"]["format"]["type"] == "json_schema"
    assert chat.body["response_format"]["type"] == "json_schema"
    assert chat.body["response_format"]["json_schema"]["name"] == "response"
    assert claude_upstream.last_body["tool_choice"]["name"] == "response"


async def test_ai_sdk_conversation_continues_on_every_backend(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    """A second turn sent with the first result's `response.messages` (whose assistant part
    the SDK sends as an `item_reference`), and a third with `previousResponseId`."""
    for _ in range(2):
        upstream.next(
            Behaviour(words=["First"]), Behaviour(words=["Second"]), Behaviour(words=["Third"])
        )
    claude_upstream.next(
        Reply(content=[text("First")]),
        Reply(content=[text("Second")]),
        Reply(content=[text("Third")]),
    )
    script = (
        AI_SDK
        + """
    for (const tier of TIERS) {
      const opening = [{ role: "user", content: "Turn 1" }];
      const first = await generateText({ model: openai(tier), messages: opening, ...common });
      const second = await generateText({
        model: openai(tier),
        messages: [...opening, ...first.response.messages, { role: "user", content: "Turn 2" }],
        ...common,
      });
      const third = await generateText({
        model: openai(tier), prompt: "Turn 3", ...common,
        providerOptions: {
          openai: { previousResponseId: second.providerMetadata.openai.responseId },
        },
      });
      out[tier] = [first.text, second.text, third.text];
    }
    """
    )
    result = await node(gateway, script, TIERS=[NATIVE, CHAT, CLAUDE, MOCK])
    for tier in (NATIVE, CHAT, CLAUDE):
        assert result[tier] == ["First", "Second", "Third"], tier
    assert all(result[MOCK])
    native = [r.body for r in upstream.requests if r.path == "/v1/responses"]
    chat = [r.body for r in upstream.requests if r.path == "/v1/chat/completions"]
    assert {"type": "item_reference", "id": "msg_fake1"} in native[1]["input"]
    assert native[2]["previous_response_id"] == "resp_fake2"
    conversation = [
        {"role": "user", "content": "Turn 1"},
        {"role": "assistant", "content": "First"},
        {"role": "user", "content": "Turn 2"},
    ]
    assert chat[1]["messages"] == conversation
    assert chat[2]["messages"] == [
        *conversation,
        {"role": "assistant", "content": "Second"},
        {"role": "user", "content": "Turn 3"},
    ]
    claude_third = claude_upstream.requests[2].body["messages"]
    assert [m["role"] for m in claude_third] == ["user", "assistant", "user", "assistant", "user"]
    assert claude_third[1]["content"] in ("First", [text("First")])
