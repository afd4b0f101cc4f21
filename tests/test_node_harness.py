"""The Node.js client harness (tests/node_clients.py) against a gateway with the mock provider.

Real Node clients, pinned in tests/node/: the Vercel AI SDK's OpenAI provider (`generateText`,
`streamText`) and the `openai` npm package, streaming and not, each answer checked against the
one the Python `openai` client gets for the same prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway
from tests.node_clients import PACKAGE_JSON, cache_root, node_modules, run_node

PROMPT = "Say hello"
TIMEOUT_S = 20.0


def mock_config() -> dict[str, Any]:
    """One tier, `demo`, on the mock provider at a pace that spreads its stream over time."""
    return {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {"mock": {"type": "mock", "pace_ms": 10}},
        "models": {"mock-model": {"provider": "mock"}},
        "tiers": {"demo": ["mock-model"]},
        "routing": {"default_tier": "demo", "retries": 0},
        "plans": {"pro": {"tiers": ["demo"]}},
        "keys": [{"name": "app", "key": APP_KEY, "plan": "pro", "feature": "chat-api"}],
    }


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> GatewayServer:
    return await start_gateway(mock_config())


@pytest.fixture
def node_env(gateway: GatewayServer) -> dict[str, str]:
    return {"GATEWAY_URL": gateway.url, "GATEWAY_KEY": APP_KEY, "PROMPT": PROMPT}


@pytest.fixture
async def expected_text(gateway: GatewayServer) -> str:
    """What the mock answers PROMPT with, as the Python client sees it."""
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=TIMEOUT_S
    ) as client:
        completion = await client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": PROMPT}]
        )
    text = completion.choices[0].message.content
    assert text
    return text


def test_install_is_cached_outside_the_repo_and_keyed_by_the_lock() -> None:
    modules = node_modules()
    repo = Path(__file__).resolve().parents[1]
    assert modules.is_dir()
    assert not modules.resolve().is_relative_to(repo)
    assert modules.parent.parent == cache_root()
    assert modules.parent.name.startswith("node-") and len(modules.parent.name) == 21
    assert node_modules() == modules


async def test_installed_packages_are_the_pinned_versions() -> None:
    script = """
    import { readFileSync } from "node:fs";
    import * as ai from "ai";
    import * as openaiProvider from "@ai-sdk/openai";
    import * as anthropicProvider from "@ai-sdk/anthropic";
    import OpenAI from "openai";
    import { z } from "zod";

    const names = ["ai", "@ai-sdk/openai", "@ai-sdk/anthropic", "openai", "zod"];
    const versions = Object.fromEntries(names.map((name) => [
      name,
      JSON.parse(readFileSync(`node_modules/${name}/package.json`, "utf8")).version,
    ]));
    const loaded = [
      typeof ai.generateText, typeof ai.streamText, typeof openaiProvider.createOpenAI,
      typeof anthropicProvider.createAnthropic, typeof OpenAI,
    ];
    const parsed = z.object({ n: z.number() }).parse({ n: 1 });
    console.log(JSON.stringify({ versions, loaded, parsed, node: process.version }));
    """
    result = await run_node(script, {}, timeout_s=TIMEOUT_S)
    pinned = json.loads(PACKAGE_JSON.read_text())["dependencies"]
    assert result["versions"] == pinned
    assert result["loaded"] == ["function"] * 5
    assert result["parsed"] == {"n": 1}


async def test_ai_sdk_generate_text(node_env: dict[str, str], expected_text: str) -> None:
    script = """
    import { createOpenAI } from "@ai-sdk/openai";
    import { generateText } from "ai";

    const provider = createOpenAI({
      baseURL: process.env.GATEWAY_URL + "/v1",
      apiKey: process.env.GATEWAY_KEY,
    });
    const result = await generateText({
      model: provider.chat("demo"),
      prompt: process.env.PROMPT,
      maxRetries: 0,
      abortSignal: AbortSignal.timeout(15000),
    });
    console.log(JSON.stringify({
      text: result.text,
      finishReason: result.finishReason,
      usage: result.usage,
      headers: result.response.headers,
    }));
    """
    result = await run_node(script, node_env, timeout_s=TIMEOUT_S)
    assert result["text"] == expected_text
    assert result["finishReason"] == "stop"
    assert result["usage"]["outputTokens"] == 16
    assert result["headers"]["x-gateway-tier"] == "demo"
    assert result["headers"]["x-gateway-model"] == "mock-model"


async def test_ai_sdk_stream_text(node_env: dict[str, str], expected_text: str) -> None:
    script = """
    import { createOpenAI } from "@ai-sdk/openai";
    import { streamText } from "ai";

    const provider = createOpenAI({
      baseURL: process.env.GATEWAY_URL + "/v1",
      apiKey: process.env.GATEWAY_KEY,
    });
    const errors = [];
    const result = streamText({
      model: provider.chat("demo"),
      prompt: process.env.PROMPT,
      maxRetries: 0,
      abortSignal: AbortSignal.timeout(15000),
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
    }));
    """
    result = await run_node(script, node_env, timeout_s=TIMEOUT_S)
    assert result["errors"] == []
    assert len(result["chunks"]) >= 5
    assert "".join(result["chunks"]) == result["text"] == expected_text
    assert result["finishReason"] == "stop"
    assert result["usage"]["outputTokens"] == 16


async def test_openai_npm_client_chat_completions(
    node_env: dict[str, str], expected_text: str
) -> None:
    script = """
    import OpenAI from "openai";

    const client = new OpenAI({
      baseURL: process.env.GATEWAY_URL + "/v1",
      apiKey: process.env.GATEWAY_KEY,
      maxRetries: 0,
      timeout: 15000,
    });
    const messages = [{ role: "user", content: process.env.PROMPT }];
    const { data: completion, response } = await client.chat.completions
      .create({ model: "demo", messages })
      .withResponse();

    const stream = await client.chat.completions.create({
      model: "demo", messages, stream: true, stream_options: { include_usage: true },
    });
    const deltas = [];
    let finishReason = null;
    let usage = null;
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      if (choice?.delta?.content) deltas.push(choice.delta.content);
      if (choice?.finish_reason) finishReason = choice.finish_reason;
      if (chunk.usage) usage = chunk.usage;
    }
    console.log(JSON.stringify({
      text: completion.choices[0].message.content,
      finishReason: completion.choices[0].finish_reason,
      tier: response.headers.get("x-gateway-tier"),
      deltas,
      streamFinishReason: finishReason,
      streamUsage: usage,
    }));
    """
    result = await run_node(script, node_env, timeout_s=TIMEOUT_S)
    assert result["text"] == expected_text
    assert result["finishReason"] == "stop"
    assert result["tier"] == "demo"
    assert len(result["deltas"]) >= 5
    assert "".join(result["deltas"]) == expected_text
    assert result["streamFinishReason"] == "stop"
    assert result["streamUsage"]["completion_tokens"] == 16


async def test_a_failing_script_raises_with_its_stderr() -> None:
    script = 'console.error("boom: " + process.env.WHY); process.exit(3);'
    with pytest.raises(AssertionError, match=r"exited with 3[\s\S]*boom: asked"):
        await run_node(script, {"WHY": "asked"}, timeout_s=TIMEOUT_S)


async def test_a_script_that_prints_no_json_raises() -> None:
    with pytest.raises(AssertionError, match="not JSON"):
        await run_node('console.log("plain words");', {}, timeout_s=TIMEOUT_S)


async def test_a_script_over_its_timeout_is_killed() -> None:
    script = 'console.error("waiting"); await new Promise((r) => setTimeout(r, 60000));'
    with pytest.raises(AssertionError, match=r"ran over 1\.0s[\s\S]*waiting"):
        await run_node(script, {}, timeout_s=1.0)
