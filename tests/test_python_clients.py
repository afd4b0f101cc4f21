"""The gateway with real Python framework clients (tests/pyclients/requirements.txt), run in a
venv of their own by tests/python_clients.py, each through the fake OpenAI upstream (chat-only,
and natively for `/v1/responses` and `/v1/completions`), the fake Anthropic (translated) and the
mock provider.

- LangChain's `ChatOpenAI`: `ainvoke` and `astream` (the chunks joined equal the invoked text),
  a tool bound with `bind_tools` and its result sent back, streamed tool calls,
  `with_structured_output` of a pydantic model, and `use_responses_api=True` streamed and not;
  `ChatAnthropic` on `/v1/messages`.
- LlamaIndex's `OpenAILike` with its defaults (`is_chat_model=False`: `/v1/completions`):
  `acomplete` and `astream_complete`; with `is_chat_model=True`: `achat` and `astream_chat`.
- litellm as a client: `acompletion(model="openai/<tier>", api_base=...)` streamed and not.
- pydantic-ai: an `Agent` on `OpenAIChatModel` and `OpenAIProvider` whose model calls a tool.

Each test checks what the client returns and what the upstream received.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text, tool_use
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.python_clients import REQUIREMENTS, cache_root, client_venv, run_python
from tests.test_responses_node import native_completions_config

TIMEOUT_S = 60.0

# The tiers of `native_completions_config`: the fake OpenAI's /v1/responses, its
# /v1/completions, a chat-only fake OpenAI model, the fake Anthropic, the mock.
NATIVE, LEGACY, CHAT, CLAUDE, MOCK = "native", "legacy", "fast", "claude", "demo"

UPSTREAM_TEXT = "Hello from the upstream"
CLAUDE_TEXT = "Hello from Claude"
OSLO_CALL = {"id": "call_oslo", "name": "get_weather", "arguments": '{"city":"Oslo"}'}
CITY = {"name": "Oslo", "population": 709000}
CITY_WORDS = ['{"name":"Oslo",', '"population":709000}']
CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["name", "population"],
}

PRELUDE = """
import asyncio, json, os
GATEWAY = os.environ["GATEWAY_URL"]
KEY = os.environ["GATEWAY_KEY"]
TIERS = json.loads(os.environ.get("TIERS", "[]"))
out = {}
"""

MAIN = """
asyncio.run(main())
print(json.dumps(out, default=str))
"""


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


async def python(gateway: GatewayServer, script: str, **env: Any) -> dict[str, Any]:
    """Run `script` (which defines `async def main()`) with GATEWAY_URL, GATEWAY_KEY and
    `env` as JSON; return what it put in `out`."""
    variables = {"GATEWAY_URL": gateway.url, "GATEWAY_KEY": APP_KEY}
    variables |= {name: json.dumps(value) for name, value in env.items()}
    return await run_python(PRELUDE + script + MAIN, variables, timeout_s=TIMEOUT_S)


def chat_bodies(upstream: FakeOpenAI) -> list[dict[str, Any]]:
    return [r.body for r in upstream.requests if r.path == "/v1/chat/completions"]


# --- the harness -----------------------------------------------------------------------------


def _pins() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.split("[")[0].lower()] = version
    return pins


def test_venv_is_cached_outside_the_repo_and_keyed_by_the_requirements() -> None:
    venv = client_venv()
    repo = Path(__file__).resolve().parents[1]
    assert (venv / "bin" / "python").exists()
    assert not venv.resolve().is_relative_to(repo)
    assert venv.parent == cache_root()
    assert venv.name.startswith("pyclients-") and len(venv.name) == len("pyclients-") + 16
    assert client_venv() == venv


async def test_installed_packages_are_the_pinned_versions(gateway: GatewayServer) -> None:
    script = """
from importlib import metadata

async def main():
    for name in json.loads(os.environ["PINS"]):
        out[name] = metadata.version(name)
    out["openai_env"] = sorted(k for k in os.environ if k.startswith(("OPENAI_", "ANTHROPIC_")))
"""
    pins = _pins()
    result = await python(gateway, script, PINS=list(pins))
    assert result.pop("openai_env") == []
    assert result == pins


# --- LangChain --------------------------------------------------------------------------------

LANGCHAIN = """
from langchain_openai import ChatOpenAI

def chat(tier, **options):
    return ChatOpenAI(
        base_url=GATEWAY + "/v1", api_key=KEY, model=tier, max_retries=0, timeout=15, **options
    )

def usage(message):
    return dict(message.usage_metadata) if message.usage_metadata else None
"""


async def test_langchain_invoke_and_stream(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    script = (
        LANGCHAIN
        + """
async def main():
    for tier in TIERS:
        llm = chat(tier, stream_usage=True)
        made = await llm.ainvoke("Say hi")
        chunks = [chunk async for chunk in llm.astream("Say hi")]
        total = chunks[0]
        for chunk in chunks[1:]:
            total += chunk
        out[tier] = {
            "text": made.text, "finish": made.response_metadata.get("finish_reason"),
            "model": made.response_metadata.get("model_name"), "usage": usage(made),
            "chunks": [chunk.text for chunk in chunks], "stream_usage": usage(total),
            "stream_finish": total.response_metadata.get("finish_reason"),
        }
"""
    )
    result = await python(gateway, script, TIERS=[CHAT, CLAUDE, MOCK])
    assert result[CHAT]["text"] == UPSTREAM_TEXT
    assert result[CLAUDE]["text"] == CLAUDE_TEXT
    for tier, got in result.items():
        assert got["text"], tier
        assert "".join(got["chunks"]) == got["text"], tier  # same prompt, same answer
        assert got["finish"] == got["stream_finish"] == "stop", tier
        assert got["usage"]["output_tokens"] > 0, tier
        assert got["stream_usage"] == got["usage"], tier
    assert result[CHAT]["model"] == "upstream-model-id"  # a native answer names its model
    assert len([c for c in result[MOCK]["chunks"] if c]) > 1  # the mock streams word by word
    made, streamed = chat_bodies(upstream)
    assert made["model"] == "upstream-model-id"
    assert made["messages"] == [{"role": "user", "content": "Say hi"}]
    assert "stream" not in made or made["stream"] is False
    assert streamed["stream"] is True and streamed["messages"] == made["messages"]
    assert streamed["stream_options"] == {"include_usage": True}
    claude_made, claude_streamed = (r.body for r in claude_upstream.requests)
    assert claude_made["model"] == "claude-x"
    assert claude_made["messages"] == [{"role": "user", "content": "Say hi"}]
    assert claude_made.get("stream", False) is False and claude_streamed["stream"] is True


async def test_langchain_bound_tool_round_trip(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    """`bind_tools`: the call comes back as `tool_calls` (streamed too, from chunks), the
    tool's result goes back as a ToolMessage and the model answers it."""
    for _ in range(2):  # invoked, then streamed: a call each, then the answer
        upstream.next(Behaviour(words=[], tool_calls=[OSLO_CALL]))
    upstream.next(Behaviour(words=["Cold"]))
    call = Reply(
        content=[tool_use("toolu_oslo", "get_weather", {"city": "Oslo"})],
        stop_reason="tool_use",
    )
    claude_upstream.next(call, call, Reply(content=[text("Cold")]))
    script = (
        LANGCHAIN
        + """
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool

@tool
def get_weather(city: str) -> str:
    \"\"\"Weather for a city.\"\"\"
    return json.dumps({"c": -3})

async def main():
    for tier in TIERS:
        llm = chat(tier).bind_tools([get_weather])
        question = [HumanMessage("Weather in Oslo?")]
        made = await llm.ainvoke(question)
        total = None
        async for chunk in llm.astream(question):
            total = chunk if total is None else total + chunk
        call = made.tool_calls[0]
        result = ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])
        answer = await llm.ainvoke([*question, made, result])
        out[tier] = {
            "calls": made.tool_calls, "streamed_calls": total.tool_calls,
            "finish": made.response_metadata.get("finish_reason"),
            "stream_finish": total.response_metadata.get("finish_reason"),
            "answer": answer.text, "answer_calls": answer.tool_calls,
        }
"""
    )
    result = await python(gateway, script, TIERS=[CHAT, CLAUDE, MOCK])
    for tier, got in result.items():
        for calls in (got["calls"], got["streamed_calls"]):
            assert [c["name"] for c in calls] == ["get_weather"], tier
            assert isinstance(calls[0]["args"]["city"], str), tier
            assert calls[0]["id"], tier
        assert got["finish"] == got["stream_finish"] == "tool_calls", tier
        assert got["answer"] and got["answer_calls"] == [], tier
    for tier, call_id in ((CHAT, "call_oslo"), (CLAUDE, "toolu_oslo")):
        for calls in (result[tier]["calls"], result[tier]["streamed_calls"]):
            oslo = {"name": "get_weather", "args": {"city": "Oslo"}, "id": call_id}
            assert calls == [{**oslo, "type": "tool_call"}], tier
        assert result[tier]["answer"] == "Cold", tier
    first, streamed, answered = chat_bodies(upstream)
    assert first["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city.",
                "parameters": {
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                    "type": "object",
                },
            },
        }
    ]
    assert streamed["stream"] is True and streamed["tools"] == first["tools"]
    assert answered["messages"][0] == {"role": "user", "content": "Weather in Oslo?"}
    assert answered["messages"][1]["role"] == "assistant"
    assert answered["messages"][1]["tool_calls"][0]["id"] == "call_oslo"
    assert answered["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call_oslo",
        "content": '{"c": -3}',
    }
    claude_first, claude_streamed, claude_answered = (r.body for r in claude_upstream.requests)
    assert claude_first["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city.",
            "input_schema": first["tools"][0]["function"]["parameters"],
        }
    ]
    assert claude_streamed["stream"] is True
    assert claude_answered["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [tool_use("toolu_oslo", "get_weather", {"city": "Oslo"})]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_oslo", "content": '{"c": -3}'}
            ],
        },
    ]


async def test_langchain_with_structured_output(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    upstream.next(Behaviour(words=CITY_WORDS))
    # LangChain names the schema after the pydantic model; for Anthropic the gateway makes it a
    # forced tool of that name.
    claude_upstream.next(
        Reply(content=[tool_use("toolu_city", "City", CITY)], stop_reason="tool_use")
    )
    script = (
        LANGCHAIN
        + """
from pydantic import BaseModel

class City(BaseModel):
    name: str
    population: int

async def main():
    for tier in TIERS:
        city = await chat(tier).with_structured_output(City).ainvoke("A city, as JSON")
        out[tier] = {"type": type(city).__name__, "city": city.model_dump()}
"""
    )
    result = await python(gateway, script, TIERS=[CHAT, CLAUDE, MOCK])
    for tier, got in result.items():
        assert got["type"] == "City", tier
        jsonschema.validate(got["city"], CITY_SCHEMA)
        if tier != MOCK:
            assert got["city"] == CITY, tier
    (sent,) = chat_bodies(upstream)
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["name"] == "City"
    assert sent["response_format"]["json_schema"]["schema"]["required"] == ["name", "population"]
    assert claude_upstream.last_body["tool_choice"]["name"] == "City"


async def test_langchain_responses_api_invoke_and_stream(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    script = (
        LANGCHAIN
        + """
async def main():
    for tier in TIERS:
        llm = chat(tier, use_responses_api=True)
        made = await llm.ainvoke("Say hi")
        chunks = [chunk async for chunk in llm.astream("Say hi")]
        total = chunks[0]
        for chunk in chunks[1:]:
            total += chunk
        out[tier] = {
            "text": made.text, "id": made.response_metadata.get("id"),
            "status": made.response_metadata.get("status"), "usage": usage(made),
            "chunks": [chunk.text for chunk in chunks], "stream_usage": usage(total),
            "stream_id": total.response_metadata.get("id"),
        }
"""
    )
    result = await python(gateway, script, TIERS=[NATIVE, CHAT, CLAUDE, MOCK])
    expected = {NATIVE: UPSTREAM_TEXT, CHAT: UPSTREAM_TEXT, CLAUDE: CLAUDE_TEXT}
    for tier, got in result.items():
        assert got["text"] == expected.get(tier, got["text"]) and got["text"], tier
        assert got["id"].startswith("resp") and got["status"] == "completed", tier
        assert "".join(got["chunks"]) == got["text"], tier
        assert got["stream_id"].startswith("resp") and got["stream_id"] != got["id"], tier
        assert got["usage"]["output_tokens"] > 0, tier
        assert got["stream_usage"]["output_tokens"] == got["usage"]["output_tokens"], tier
    native, native_stream, chat, chat_stream = upstream.requests
    assert [native.path, native_stream.path] == ["/v1/responses"] * 2
    assert native.body["model"] == "gpt-native-id"
    assert native.body["input"] == [{"type": "message", "role": "user", "content": "Say hi"}]
    assert native_stream.body["stream"] is True
    assert [chat.path, chat_stream.path] == ["/v1/chat/completions"] * 2
    assert chat.body["messages"] == [{"role": "user", "content": "Say hi"}]
    assert chat_stream.body["stream"] is True
    assert [r.body.get("stream", False) for r in claude_upstream.requests] == [False, True]


async def test_langchain_anthropic_on_the_messages_api(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    """`ChatAnthropic` on `/v1/messages`: native to the fake Anthropic, translated to chat for
    the fake OpenAI model and the mock."""
    script = """
from langchain_anthropic import ChatAnthropic

async def main():
    for tier in TIERS:
        llm = ChatAnthropic(
            base_url=GATEWAY, api_key=KEY, model=tier, max_retries=0, timeout=15, max_tokens=64
        )
        made = await llm.ainvoke("Say hi")
        chunks = [chunk.text async for chunk in llm.astream("Say hi")]
        out[tier] = {
            "text": made.text, "stop": made.response_metadata.get("stop_reason"),
            "chunks": chunks, "usage": dict(made.usage_metadata or {}),
        }
"""
    result = await python(gateway, script, TIERS=[CLAUDE, CHAT, MOCK])
    assert result[CLAUDE]["text"] == CLAUDE_TEXT and result[CHAT]["text"] == UPSTREAM_TEXT
    for tier, got in result.items():
        assert got["text"] and "".join(got["chunks"]) == got["text"], tier
        assert got["stop"] == "end_turn", tier
        assert got["usage"]["output_tokens"] > 0, tier
    claude_made, claude_streamed = (r.body for r in claude_upstream.requests)
    assert claude_made["model"] == "claude-x" and claude_made["max_tokens"] == 64
    assert claude_made["messages"] == [{"role": "user", "content": "Say hi"}]
    assert claude_streamed["stream"] is True
    made, streamed = chat_bodies(upstream)
    assert made["messages"] == [{"role": "user", "content": "Say hi"}]
    assert made["max_tokens"] == 64 and streamed["stream"] is True


# --- LlamaIndex -------------------------------------------------------------------------------

LLAMA_INDEX = """
from llama_index.llms.openai_like import OpenAILike

def llm(tier, **options):
    return OpenAILike(
        api_base=GATEWAY + "/v1", api_key=KEY, model=tier, max_retries=0, timeout=15, **options
    )
"""


async def test_llama_index_openai_like_complete_and_stream(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    """The defaults (`is_chat_model=False`): `/v1/completions`, native for the `legacy` tier,
    translated to chat for the others."""
    script = (
        LLAMA_INDEX
        + """
async def main():
    for tier in TIERS:
        model = llm(tier)
        made = await model.acomplete("Say hi")
        deltas, last = [], None
        async for part in await model.astream_complete("Say hi"):
            deltas.append(part.delta)
            last = part.text
        out[tier] = {"text": made.text, "deltas": deltas, "last": last,
                     "chat": model.metadata.is_chat_model}
"""
    )
    result = await python(gateway, script, TIERS=[LEGACY, CHAT, CLAUDE, MOCK])
    expected = {LEGACY: UPSTREAM_TEXT, CHAT: UPSTREAM_TEXT, CLAUDE: CLAUDE_TEXT}
    for tier, got in result.items():
        assert got["chat"] is False, tier
        assert got["text"] == expected.get(tier, got["text"]) and got["text"], tier
        assert "".join(d or "" for d in got["deltas"]) == got["last"] == got["text"], tier
    legacy, legacy_stream, chat, chat_stream = upstream.requests
    assert [legacy.path, legacy_stream.path] == ["/v1/completions"] * 2
    assert legacy.body["model"] == "legacy-id" and legacy.body["prompt"] == "Say hi"
    assert legacy_stream.body["stream"] is True
    assert [chat.path, chat_stream.path] == ["/v1/chat/completions"] * 2
    assert chat.body["messages"] == [{"role": "user", "content": "Say hi"}]
    assert chat_stream.body["stream"] is True
    assert [r.body.get("stream", False) for r in claude_upstream.requests] == [False, True]
    assert claude_upstream.requests[0].body["messages"] == [{"role": "user", "content": "Say hi"}]


async def test_llama_index_openai_like_chat(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    script = (
        LLAMA_INDEX
        + """
from llama_index.core.llms import ChatMessage

async def main():
    for tier in TIERS:
        model = llm(tier, is_chat_model=True)
        messages = [ChatMessage(role="system", content="Be brief."),
                    ChatMessage(role="user", content="Say hi")]
        made = await model.achat(messages)
        deltas = [part.delta async for part in await model.astream_chat(messages)]
        out[tier] = {"role": str(made.message.role.value), "text": made.message.content,
                     "deltas": deltas}
"""
    )
    result = await python(gateway, script, TIERS=[CHAT, CLAUDE, MOCK])
    assert result[CHAT]["text"] == UPSTREAM_TEXT and result[CLAUDE]["text"] == CLAUDE_TEXT
    for tier, got in result.items():
        assert got["role"] == "assistant" and got["text"], tier
        assert "".join(d or "" for d in got["deltas"]) == got["text"], tier
    made, streamed = chat_bodies(upstream)
    assert made["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
    ]
    assert streamed["stream"] is True and streamed["messages"] == made["messages"]
    assert claude_upstream.requests[0].body["system"] == "Be brief."
    assert claude_upstream.requests[1].body["stream"] is True


# --- litellm ----------------------------------------------------------------------------------


async def test_litellm_acompletion_streamed_and_not(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    script = """
import litellm

async def main():
    for tier in TIERS:
        ask = dict(
            model="openai/" + tier, api_base=GATEWAY + "/v1", api_key=KEY,
            messages=[{"role": "user", "content": "Say hi"}], timeout=15, num_retries=0,
        )
        made = await litellm.acompletion(**ask)
        deltas, finish = [], None
        async for chunk in await litellm.acompletion(**ask, stream=True):
            deltas.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        out[tier] = {
            "text": made.choices[0].message.content, "finish": made.choices[0].finish_reason,
            "usage": made.usage.model_dump(), "deltas": deltas, "stream_finish": finish,
        }
"""
    result = await python(gateway, script, TIERS=[CHAT, CLAUDE, MOCK])
    assert result[CHAT]["text"] == UPSTREAM_TEXT and result[CLAUDE]["text"] == CLAUDE_TEXT
    for tier, got in result.items():
        assert got["text"] and "".join(got["deltas"]) == got["text"], tier
        assert got["finish"] == got["stream_finish"] == "stop", tier
        assert got["usage"]["completion_tokens"] > 0, tier
    assert result[CLAUDE]["usage"]["prompt_tokens"] == 12
    made, streamed = chat_bodies(upstream)
    assert made["model"] == "upstream-model-id"
    assert made["messages"] == [{"role": "user", "content": "Say hi"}]
    assert streamed["stream"] is True
    assert [r.body.get("stream", False) for r in claude_upstream.requests] == [False, True]


# --- pydantic-ai ------------------------------------------------------------------------------


async def test_pydantic_ai_agent_runs_a_tool(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    upstream.next(Behaviour(words=[], tool_calls=[OSLO_CALL]), Behaviour(words=["Cold"]))
    claude_upstream.next(
        Reply(
            content=[tool_use("toolu_oslo", "get_weather", {"city": "Oslo"})],
            stop_reason="tool_use",
        ),
        Reply(content=[text("Cold")]),
    )
    script = """
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

async def main():
    calls = []
    for tier in TIERS:
        provider = OpenAIProvider(base_url=GATEWAY + "/v1", api_key=KEY)
        model = OpenAIChatModel(tier, provider=provider)
        agent = Agent(model, instructions="Be brief.")

        @agent.tool_plain
        def get_weather(city: str) -> dict:
            \"\"\"Weather for a city.\"\"\"
            calls.append(city)
            return {"c": -3}

        result = await agent.run("Weather in Oslo?")
        usage = result.usage
        out[tier] = {
            "output": result.output, "requests": usage.requests,
            "parts": [[p.part_kind for p in m.parts] for m in result.all_messages()],
        }
    out["calls"] = calls
"""
    result = await python(gateway, script, TIERS=[CHAT, CLAUDE, MOCK])
    calls = result.pop("calls")
    assert calls[:2] == ["Oslo", "Oslo"] and len(calls) == 3  # the mock picks its own city
    for tier, got in result.items():
        assert got["requests"] == 2 and got["output"], tier
        assert got["parts"] == [
            ["user-prompt"],
            ["tool-call"],
            ["tool-return"],
            ["text"],
        ], tier
    assert result[CHAT]["output"] == result[CLAUDE]["output"] == "Cold"
    first, second = chat_bodies(upstream)
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert first["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
    ]
    messages = second["messages"]
    assert messages[2]["role"] == "assistant"
    assert messages[2]["tool_calls"][0]["id"] == "call_oslo"
    assert messages[3]["role"] == "tool" and messages[3]["tool_call_id"] == "call_oslo"
    assert json.loads(messages[3]["content"]) == {"c": -3}
    claude_first, claude_second = (r.body for r in claude_upstream.requests)
    assert claude_first["system"] == "Be brief."
    assert claude_first["tools"][0]["name"] == "get_weather"
    assert claude_second["messages"][1]["content"] == [
        tool_use("toolu_oslo", "get_weather", {"city": "Oslo"})
    ]
    assert claude_second["messages"][2]["content"][0]["type"] == "tool_result"


TEXT_EVENTS_BEFORE = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
TEXT_EVENTS_AFTER = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


async def test_litellm_responses_streamed_and_not(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    """`litellm.aresponses` on `/v1/responses`: native for the `native` tier, translated to
    chat for the chat-only model, Anthropic and the mock."""
    script = """
import litellm

# litellm fakes a stream (one plain call, replayed as events) for models its price map does not
# say stream natively; the tiers are the gateway's names, so say it for them.
litellm.register_model({
    "openai/" + tier: {"litellm_provider": "openai", "mode": "responses",
                       "supports_native_streaming": True}
    for tier in TIERS
})

async def main():
    for tier in TIERS:
        ask = dict(
            model="openai/" + tier, api_base=GATEWAY + "/v1", api_key=KEY, input="Say hi",
            timeout=15, num_retries=0,
        )
        made = await litellm.aresponses(**ask)
        events, deltas, final = [], [], None
        async for event in await litellm.aresponses(**ask, stream=True):
            kind = getattr(event.type, "value", event.type)  # litellm's own str enum
            events.append(kind)
            if kind == "response.output_text.delta":
                deltas.append(event.delta)
            if kind == "response.completed":
                final = event.response
        text = "".join(
            part.text for item in made.output if getattr(item, "type", "") == "message"
            for part in item.content if getattr(part, "type", "") == "output_text"
        )
        out[tier] = {
            "id": made.id, "status": made.status, "text": text,
            "output_tokens": made.usage.output_tokens, "events": events, "deltas": deltas,
            "final_status": final.status if final is not None else None,
        }
"""
    result = await python(gateway, script, TIERS=[NATIVE, CHAT, CLAUDE, MOCK])
    expected = {NATIVE: UPSTREAM_TEXT, CHAT: UPSTREAM_TEXT, CLAUDE: CLAUDE_TEXT}
    for tier, got in result.items():
        assert got["id"].startswith("resp") and got["status"] == "completed", tier
        assert got["text"] == expected.get(tier, got["text"]) and got["text"], tier
        assert got["output_tokens"] > 0, tier
        assert "".join(got["deltas"]) == got["text"], tier
        assert got["final_status"] == "completed", tier
        words = len(got["deltas"])
        assert got["events"] == [
            *TEXT_EVENTS_BEFORE,
            *["response.output_text.delta"] * words,
            *TEXT_EVENTS_AFTER,
        ], tier
    native, native_stream, chat, chat_stream = upstream.requests
    assert [native.path, native_stream.path] == ["/v1/responses"] * 2
    assert native.body["model"] == "gpt-native-id" and native_stream.body["stream"] is True
    assert [chat.path, chat_stream.path] == ["/v1/chat/completions"] * 2
    assert chat.body["messages"] == [{"role": "user", "content": "Say hi"}]
    assert [r.body.get("stream", False) for r in claude_upstream.requests] == [False, True]


async def test_pydantic_ai_structured_output(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    """An Agent with `output_type` (pydantic-ai's default: a forced output tool): the answer
    validates as the model, the mock's included."""
    upstream.next(
        Behaviour(
            words=[],
            tool_calls=[{"id": "call_city", "name": "final_result", "arguments": json.dumps(CITY)}],
        )
    )
    claude_upstream.next(
        Reply(content=[tool_use("toolu_city", "final_result", CITY)], stop_reason="tool_use")
    )
    script = """
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

class City(BaseModel):
    name: str
    population: int

async def main():
    for tier in TIERS:
        provider = OpenAIProvider(base_url=GATEWAY + "/v1", api_key=KEY)
        agent = Agent(OpenAIChatModel(tier, provider=provider), output_type=City)
        result = await agent.run("A city")
        out[tier] = {"type": type(result.output).__name__, "city": result.output.model_dump()}
"""
    result = await python(gateway, script, TIERS=[CHAT, CLAUDE, MOCK])
    for tier, got in result.items():
        assert got["type"] == "City", tier
        jsonschema.validate(got["city"], CITY_SCHEMA)
    assert result[CHAT]["city"] == result[CLAUDE]["city"] == CITY
    (sent,) = chat_bodies(upstream)
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["final_result"]
    assert claude_upstream.last_body["tools"][0]["name"] == "final_result"
