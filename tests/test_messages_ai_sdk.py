"""The real Vercel AI SDK (`ai` with `@ai-sdk/anthropic`, in Node) at the gateway's
`/v1/messages`, as an app configures it: `createAnthropic({baseURL: <gateway>/v1, apiKey})`.

`generateText`, `streamText` and a tool loop (a zod-typed tool with `execute`, two steps, so the
tool result goes back and a final text comes) each run against three models: the built-in mock,
a fake OpenAI upstream (the Messages API translated to chat and back) and a fake Anthropic
upstream (native passthrough). Checked: what the SDK returns (text, stream deltas, tool calls
and results, usage, finish reasons, no warnings) and what each upstream was sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text, tool_use
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.node_clients import run_node

PROMPT = "Say hello to the gateway"
TOOL_PROMPT = "What is the weather in Paris? Use get_weather."
MAX_TOKENS = 256
TIMEOUT_S = 30.0
ANTHROPIC_KEY = "sk-ant-test"
# The tier each backend sits behind; the mock, a chat upstream, an Anthropic upstream.
MODELS = {"mock": "demo", "openai": "fast", "anthropic": "native"}
BACKENDS = list(MODELS)
# What the tool's `execute` answers, from its input.
FORECAST = {"temperature_c": 18, "conditions": "sunny"}


def ai_sdk_config(openai_url: str, anthropic_url: str, usage_path: Path) -> dict[str, Any]:
    raw = base_config(openai_url)
    raw["providers"]["claude"] = {
        "type": "anthropic",
        "base_url": anthropic_url,
        "api_key": ANTHROPIC_KEY,
    }
    raw["models"]["claude-up"] = {
        "provider": "claude",
        "model": "claude-up-id",
        "timeout": {"connect": 2, "first_token": 5, "total": 30},
    }
    raw["tiers"]["native"] = ["claude-up"]
    raw["plans"]["pro"]["tiers"].append("native")
    raw["usage"] = {"sinks": {"jsonl": str(usage_path)}}
    return raw


@pytest.fixture
async def claude_upstream() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(ANTHROPIC_KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gateway(
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    start_gateway: StartGateway,
    tmp_path: Path,
) -> GatewayServer:
    return await start_gateway(
        ai_sdk_config(upstream.url, claude_upstream.url, tmp_path / "usage.jsonl")
    )


def node_env(gateway: GatewayServer, backend: str, prompt: str) -> dict[str, str]:
    return {
        "GATEWAY_URL": gateway.url,
        "GATEWAY_KEY": APP_KEY,
        "MODEL": MODELS[backend],
        "PROMPT": prompt,
        "MAX_TOKENS": str(MAX_TOKENS),
    }


def records(gateway: GatewayServer) -> list[dict[str, Any]]:
    path = Path(gateway.config.usage.sinks.jsonl or "")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def flushed_records(gateway: GatewayServer, count: int) -> list[dict[str, Any]]:
    for _ in range(200):
        found = records(gateway)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"expected {count} usage records, found {records(gateway)}")


async def mock_answer(gateway: GatewayServer, prompt: str) -> anthropic.types.Message:
    """What the mock answers `prompt` with, as the Python anthropic SDK sees it."""
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key=APP_KEY, max_retries=0, timeout=TIMEOUT_S
    ) as sdk:
        return await sdk.messages.create(
            model=MODELS["mock"],
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": prompt}],
        )


# --- generateText --------------------------------------------------------------------------

GENERATE = """
import { createAnthropic } from "@ai-sdk/anthropic";
import { generateText } from "ai";

const anthropic = createAnthropic({
  baseURL: process.env.GATEWAY_URL + "/v1",
  apiKey: process.env.GATEWAY_KEY,
});
const result = await generateText({
  model: anthropic(process.env.MODEL),
  prompt: process.env.PROMPT,
  maxOutputTokens: Number(process.env.MAX_TOKENS),
  maxRetries: 0,
  abortSignal: AbortSignal.timeout(20000),
});
console.log(JSON.stringify({
  text: result.text,
  finishReason: result.finishReason,
  usage: result.usage,
  warnings: result.warnings,
  modelId: result.response.modelId,
  responseId: result.response.id,
  headers: result.response.headers,
}));
"""


@pytest.mark.parametrize("backend", BACKENDS)
async def test_generate_text(
    backend: str,
    gateway: GatewayServer,
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
) -> None:
    upstream.next(Behaviour(words=["Hello", " from", " GPT"], prompt_tokens=21, cached_tokens=5))
    claude_upstream.next(
        Reply(
            content=[text("Hello from Claude")],
            input_tokens=12,
            output_tokens=7,
            cache_read_input_tokens=30,
        )
    )
    expected_mock = await mock_answer(gateway, PROMPT) if backend == "mock" else None
    result = await run_node(GENERATE, node_env(gateway, backend, PROMPT), timeout_s=TIMEOUT_S)

    assert result["warnings"] == []
    assert result["finishReason"] == "stop"
    assert result["responseId"].startswith("msg_")
    assert result["headers"]["x-gateway-tier"] == MODELS[backend]
    usage = result["usage"]
    if expected_mock is not None:
        assert result["text"] == expected_mock.content[0].text  # type: ignore[union-attr]
        assert result["modelId"] == "demo"
        assert usage["inputTokens"] == expected_mock.usage.input_tokens
        assert usage["outputTokens"] == expected_mock.usage.output_tokens == 16
    elif backend == "openai":
        assert result["text"] == "Hello from GPT"
        assert result["modelId"] == "fast"  # the name the client asked for, not the upstream's
        # Anthropic's input_tokens leave out cache reads; the SDK adds them back.
        assert (usage["inputTokens"], usage["outputTokens"]) == (21, 3)
        assert usage["inputTokenDetails"]["cacheReadTokens"] == 5
        (sent,) = upstream.requests
        assert sent.body["model"] == "upstream-model-id"
        assert sent.body["max_tokens"] == MAX_TOKENS
        assert sent.body["messages"] == [{"role": "user", "content": PROMPT}]
        assert "stream" not in sent.body
    else:
        assert result["text"] == "Hello from Claude"
        assert result["modelId"] == "claude-up-id"  # native: the upstream's own answer
        assert (usage["inputTokens"], usage["outputTokens"]) == (12 + 30, 7)
        assert usage["inputTokenDetails"]["cacheReadTokens"] == 30
        (received,) = claude_upstream.requests
        assert received.body == {
            "model": "claude-up-id",
            "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}],
        }
        assert received.headers["x-api-key"] == ANTHROPIC_KEY  # the provider's, not the app's
    if backend != "openai":
        assert not upstream.requests
    if backend != "anthropic":
        assert not claude_upstream.requests
    record = (await flushed_records(gateway, 2 if backend == "mock" else 1))[-1]
    assert record["api"] == "messages" and record["status"] == 200
    assert record["tier"] == MODELS[backend] and record["stream"] is False
    assert record["completion_tokens"] == usage["outputTokens"]


# --- streamText ----------------------------------------------------------------------------

STREAM = """
import { createAnthropic } from "@ai-sdk/anthropic";
import { streamText } from "ai";

const anthropic = createAnthropic({
  baseURL: process.env.GATEWAY_URL + "/v1",
  apiKey: process.env.GATEWAY_KEY,
});
const errors = [];
const result = streamText({
  model: anthropic(process.env.MODEL),
  prompt: process.env.PROMPT,
  maxOutputTokens: Number(process.env.MAX_TOKENS),
  maxRetries: 0,
  abortSignal: AbortSignal.timeout(20000),
  onError: ({ error }) => { errors.push(String(error)); },
});
const chunks = [];
for await (const delta of result.textStream) chunks.push(delta);
console.log(JSON.stringify({
  chunks,
  errors,
  text: await result.text,
  finishReason: await result.finishReason,
  usage: await result.usage,
  warnings: await result.warnings,
  modelId: (await result.response).modelId,
}));
"""


@pytest.mark.parametrize("backend", BACKENDS)
async def test_stream_text(
    backend: str,
    gateway: GatewayServer,
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
) -> None:
    upstream.next(Behaviour(words=["One", " two", " three", " four"], prompt_tokens=9))
    claude_upstream.next(
        Reply(content=[text("Streamed from Claude")], input_tokens=14, output_tokens=5)
    )
    expected_mock = await mock_answer(gateway, PROMPT) if backend == "mock" else None
    result = await run_node(STREAM, node_env(gateway, backend, PROMPT), timeout_s=TIMEOUT_S)

    assert result["errors"] == [] and result["warnings"] == []
    assert result["finishReason"] == "stop"
    assert "".join(result["chunks"]) == result["text"]
    usage = result["usage"]
    if expected_mock is not None:
        assert result["text"] == expected_mock.content[0].text  # type: ignore[union-attr]
        assert len(result["chunks"]) == 16  # one delta per mock token
        assert usage["inputTokens"] == expected_mock.usage.input_tokens
        assert usage["outputTokens"] == 16
    elif backend == "openai":
        assert result["chunks"] == ["One", " two", " three", " four"]
        assert (usage["inputTokens"], usage["outputTokens"]) == (9, 4)
        (sent,) = upstream.requests
        assert sent.body["stream"] is True
        assert sent.body["stream_options"] == {"include_usage": True}
        assert sent.body["messages"] == [{"role": "user", "content": PROMPT}]
    else:
        # The fake streams text in four-character pieces; each arrives as its own delta.
        assert result["chunks"] == ["Stre", "amed", " fro", "m Cl", "aude"]
        assert result["modelId"] == "claude-up-id"
        assert (usage["inputTokens"], usage["outputTokens"]) == (14, 5)
        (received,) = claude_upstream.requests
        assert received.body["stream"] is True and received.body["model"] == "claude-up-id"
    record = (await flushed_records(gateway, 2 if backend == "mock" else 1))[-1]
    assert record["api"] == "messages" and record["stream"] is True
    assert (record["completion_tokens"], record["estimated"]) == (usage["outputTokens"], False)


# --- a tool loop ---------------------------------------------------------------------------

TOOLS = """
import { createAnthropic } from "@ai-sdk/anthropic";
import { generateText, streamText, stepCountIs, tool } from "ai";
import { z } from "zod";

const anthropic = createAnthropic({
  baseURL: process.env.GATEWAY_URL + "/v1",
  apiKey: process.env.GATEWAY_KEY,
});
const executed = [];
const getWeather = tool({
  description: "The current weather in a city",
  inputSchema: z.object({ city: z.string().describe("The city name") }),
  execute: async ({ city }) => {
    executed.push(city);
    return { city, ...JSON.parse(process.env.FORECAST) };
  },
});
const errors = [];
const options = {
  model: anthropic(process.env.MODEL),
  prompt: process.env.PROMPT,
  tools: { get_weather: getWeather },
  stopWhen: stepCountIs(2),
  maxOutputTokens: Number(process.env.MAX_TOKENS),
  maxRetries: 0,
  abortSignal: AbortSignal.timeout(20000),
};
let result;
if (process.env.STREAM === "1") {
  result = streamText({ ...options, onError: ({ error }) => { errors.push(String(error)); } });
  for await (const _ of result.textStream) { /* drain */ }
} else {
  result = await generateText(options);
}
const steps = (await result.steps).map((step) => ({
  finishReason: step.finishReason,
  text: step.text,
  toolCalls: step.toolCalls.map((c) => ({ id: c.toolCallId, name: c.toolName, input: c.input })),
  toolResults: step.toolResults.map((r) => ({
    id: r.toolCallId, name: r.toolName, output: r.output,
  })),
  usage: step.usage,
}));
console.log(JSON.stringify({
  steps,
  executed,
  errors,
  text: await result.text,
  finishReason: await result.finishReason,
  totalUsage: await result.totalUsage,
}));
"""


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_tool_call_then_final_text(
    backend: str,
    stream: bool,
    gateway: GatewayServer,
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
) -> None:
    upstream.next(
        Behaviour(
            words=[],
            tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'}],
            prompt_tokens=40,
            completion_tokens=6,
        ),
        Behaviour(words=["Sunny", " in", " Paris."], prompt_tokens=60),
    )
    claude_upstream.next(
        Reply(
            content=[text("Let me check."), tool_use("toolu_01", "get_weather", {"city": "Paris"})],
            stop_reason="tool_use",
            input_tokens=50,
            output_tokens=8,
        ),
        Reply(content=[text("Sunny in Paris.")], input_tokens=70, output_tokens=4),
    )
    env = {**node_env(gateway, backend, TOOL_PROMPT), "FORECAST": json.dumps(FORECAST)}
    env["STREAM"] = "1" if stream else "0"
    result = await run_node(TOOLS, env, timeout_s=TIMEOUT_S)

    assert result["errors"] == []
    first, second = result["steps"]
    assert first["finishReason"] == "tool-calls"
    (call,) = first["toolCalls"]
    (tool_result,) = first["toolResults"]
    assert call["name"] == tool_result["name"] == "get_weather"
    assert tool_result["id"] == call["id"]
    assert result["executed"] == [call["input"]["city"]]
    assert tool_result["output"] == {"city": call["input"]["city"], **FORECAST}
    assert second["toolCalls"] == [] and second["finishReason"] == "stop"
    assert result["finishReason"] == "stop"
    assert result["text"] == second["text"] and result["text"]
    total = result["totalUsage"]
    assert total["outputTokens"] == first["usage"]["outputTokens"] + second["usage"]["outputTokens"]

    if backend == "mock":
        assert isinstance(call["input"]["city"], str) and set(call["input"]) == {"city"}
        assert call["id"].startswith("call_")
    elif backend == "openai":
        assert call == {"id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}
        assert result["text"] == "Sunny in Paris."
        assert (total["inputTokens"], total["outputTokens"]) == (40 + 60, 6 + 3)
        asked, answered = (request.body for request in upstream.requests)
        (function,) = asked["tools"]
        assert function["type"] == "function"
        assert function["function"]["name"] == "get_weather"
        assert function["function"]["description"] == "The current weather in a city"
        assert function["function"]["parameters"]["properties"]["city"]["type"] == "string"
        assert function["function"]["parameters"]["required"] == ["city"]
        user, assistant, tool_message = answered["messages"]
        assert user == {"role": "user", "content": TOOL_PROMPT}
        (sent_call,) = assistant["tool_calls"]
        assert sent_call["id"] == "call_1" and sent_call["function"]["name"] == "get_weather"
        assert json.loads(sent_call["function"]["arguments"]) == {"city": "Paris"}
        assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_1"
        assert json.loads(tool_message["content"]) == {"city": "Paris", **FORECAST}
    else:
        assert call == {"id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
        assert first["text"] == "Let me check."
        assert result["text"] == "Sunny in Paris."
        assert (total["inputTokens"], total["outputTokens"]) == (50 + 70, 8 + 4)
        asked, answered = (request.body for request in claude_upstream.requests)
        (sent_tool,) = asked["tools"]
        assert sent_tool["name"] == "get_weather"
        assert sent_tool["input_schema"]["properties"]["city"]["type"] == "string"
        # The tool result went back as Anthropic blocks, untranslated: the fake checks that
        # it answers the tool_use of the turn before, as the real API does.
        assert answered["messages"][1]["role"] == "assistant"
        assert {"type": "tool_use", "id": "toolu_01", "name": "get_weather"}.items() <= (
            answered["messages"][1]["content"][-1].items()
        )
        (block,) = answered["messages"][2]["content"]
        assert block["type"] == "tool_result" and block["tool_use_id"] == "toolu_01"
        assert json.loads(block["content"]) == {"city": "Paris", **FORECAST}
        assert [r.body.get("stream", False) for r in claude_upstream.requests] == [stream] * 2
