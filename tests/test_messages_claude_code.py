"""A replay of Claude Code's traffic at `/v1/messages`, built to the request shapes Anthropic
documents and Claude Code sends: `?beta=true`, `anthropic-beta` with Claude Code's betas, the
key in `x-api-key`, `system` as text blocks with `cache_control`, a dozen tools with real
input schemas, `thinking` with a budget, `metadata.user_id`, `stream: true`, and a three-request
agent loop whose history sends back assistant turns with signed thinking blocks and tool uses,
and user turns with tool results (one failed, one whose content is text blocks).

Through a native model (a fake Anthropic upstream): the upstream gets every body exactly as
sent but for `model`, and Claude Code's betas; the client gets the upstream's events byte for
byte. Through a translated model (a fake OpenAI upstream): the chat request carries the system
text, every tool as a function, tool messages answering the right calls, the failed one marked,
and no thinking; the client gets Anthropic's event sequence with consistent block indexes. Both
are reached by the Anthropic model ids Claude Code sends, mapped to tiers by aliases, and each
request leaves a usage record (api `messages`, the user from `metadata.user_id`, the tokens).
The real `anthropic` SDK's beta client replays the last request too.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, UPSTREAM_KEY, StartGateway, base_config
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply, text, tool_use
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI

ANTHROPIC_KEY = "sk-ant-upstream-key"
BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14"
)
USER_ID = (
    "user_9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    "_account_6f1ed002-ab5f-4e3c-9e4b-2d1b5c7a8e90_session_3f2a9c1e-7b4d-4e8f-a6c2-1d9e0b5f7a34"
)
NATIVE_MODEL = "claude-sonnet-4-5"  # an alias of the native tier
TRANSLATED_MODEL = "claude-3-5-haiku-20241022"  # an alias of a chat tier
TIMEOUT = aiohttp.ClientTimeout(total=20)

# What Claude Code sends besides the body (the key, the version, its betas, its client).
HEADERS = {
    "x-api-key": APP_KEY,
    "anthropic-version": "2023-06-01",
    "anthropic-beta": BETAS,
    "anthropic-dangerous-direct-browser-access": "true",
    "x-app": "cli",
    "user-agent": "claude-cli/2.0.14 (external, cli)",
    "x-stainless-lang": "js",
    "x-stainless-retry-count": "0",
    "x-stainless-timeout": "600",
    "content-type": "application/json",
    "accept": "application/json",
}

SYSTEM: list[dict[str, Any]] = [
    {
        "type": "text",
        "text": "You are Claude Code, Anthropic's official CLI for Claude.",
        "cache_control": {"type": "ephemeral"},
    },
    {
        "type": "text",
        "text": (
            "You are an interactive CLI tool that helps users with software engineering tasks."
            " Use the instructions below and the tools available to you to assist the user.\n\n"
            "Working directory: /repo\nIs directory a git repo: Yes\nPlatform: linux"
        ),
        "cache_control": {"type": "ephemeral"},
    },
]
SYSTEM_TEXT = SYSTEM[0]["text"] + "\n\n" + SYSTEM[1]["text"]
SCHEMA = "http://json-schema.org/draft-07/schema#"


def tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> Any:
    return {
        "name": name,
        "description": description,
        "input_schema": {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
            "$schema": SCHEMA,
        },
    }


def string(description: str, **more: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **more}


TOOLS: list[dict[str, Any]] = [
    tool(
        "Task",
        "Launch a new agent to handle complex, multi-step tasks autonomously.",
        {
            "description": string("A short (3-5 word) description of the task"),
            "prompt": string("The task for the agent to perform"),
            "subagent_type": string("The type of specialized agent to use for this task"),
        },
        ["description", "prompt", "subagent_type"],
    ),
    tool(
        "Bash",
        "Executes a given bash command in a persistent shell session with optional timeout.",
        {
            "command": string("The command to execute"),
            "timeout": {"type": "number", "description": "Optional timeout in milliseconds"},
            "description": string("Clear, concise description of what this command does"),
            "run_in_background": {"type": "boolean", "description": "Run in the background"},
        },
        ["command"],
    ),
    tool(
        "Glob",
        "Fast file pattern matching tool that works with any codebase size.",
        {
            "pattern": string("The glob pattern to match files against"),
            "path": string("The directory to search in"),
        },
        ["pattern"],
    ),
    tool(
        "Grep",
        "A powerful search tool built on ripgrep.",
        {
            "pattern": string("The regular expression pattern to search for"),
            "path": string("File or directory to search in"),
            "glob": string('Glob pattern to filter files (e.g. "*.js")'),
            "output_mode": string("Output mode", enum=["content", "files_with_matches", "count"]),
            "-i": {"type": "boolean", "description": "Case insensitive search"},
            "-n": {"type": "boolean", "description": "Show line numbers in output"},
            "head_limit": {"type": "number", "description": "Limit output to first N entries"},
            "multiline": {"type": "boolean", "description": "Enable multiline mode"},
        },
        ["pattern"],
    ),
    tool(
        "LS",
        "Lists files and directories in a given path.",
        {
            "path": string("The absolute path to the directory to list"),
            "ignore": {
                "type": "array",
                "items": {"type": "string"},
                "description": "List of glob patterns to ignore",
            },
        },
        ["path"],
    ),
    tool(
        "Read",
        "Reads a file from the local filesystem.",
        {
            "file_path": string("The absolute path to the file to read"),
            "offset": {"type": "number", "description": "The line number to start reading from"},
            "limit": {"type": "number", "description": "The number of lines to read"},
        },
        ["file_path"],
    ),
    tool(
        "Edit",
        "Performs exact string replacements in files.",
        {
            "file_path": string("The absolute path to the file to modify"),
            "old_string": string("The text to replace"),
            "new_string": string("The text to replace it with"),
            "replace_all": {
                "type": "boolean",
                "default": False,
                "description": "Replace all occurrences of old_string",
            },
        },
        ["file_path", "old_string", "new_string"],
    ),
    tool(
        "MultiEdit",
        "Makes multiple edits to a single file in one operation.",
        {
            "file_path": string("The absolute path to the file to modify"),
            "edits": {
                "type": "array",
                "minItems": 1,
                "description": "Array of edit operations to perform sequentially on the file",
                "items": {
                    "type": "object",
                    "properties": {
                        "old_string": string("The text to replace"),
                        "new_string": string("The text to replace it with"),
                        "replace_all": {"type": "boolean", "default": False},
                    },
                    "required": ["old_string", "new_string"],
                    "additionalProperties": False,
                },
            },
        },
        ["file_path", "edits"],
    ),
    tool(
        "Write",
        "Writes a file to the local filesystem.",
        {
            "file_path": string("The absolute path to the file to write"),
            "content": string("The content to write to the file"),
        },
        ["file_path", "content"],
    ),
    tool(
        "WebFetch",
        "Fetches content from a specified URL and processes it using an AI model.",
        {
            "url": string("The URL to fetch content from", format="uri"),
            "prompt": string("The prompt to run on the fetched content"),
        },
        ["url", "prompt"],
    ),
    tool(
        "TodoWrite",
        "Use this tool to create and manage a structured task list for your current session.",
        {
            "todos": {
                "type": "array",
                "description": "The updated todo list",
                "items": {
                    "type": "object",
                    "properties": {
                        "content": string("", minLength=1),
                        "status": {
                            "type": "string",
                            "enum": ["pending", "in_progress", "completed"],
                        },
                        "activeForm": string("", minLength=1),
                    },
                    "required": ["content", "status", "activeForm"],
                    "additionalProperties": False,
                },
            }
        },
        ["todos"],
    ),
    tool(
        "WebSearch",
        "Allows Claude to search the web and use the results to inform responses.",
        {
            "query": string("The search query to use", minLength=2),
            "allowed_domains": {"type": "array", "items": {"type": "string"}},
            "blocked_domains": {"type": "array", "items": {"type": "string"}},
        },
        ["query"],
    ),
]

REMINDER = (
    "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
    "# important-instruction-reminders\nDo what has been asked; nothing more, nothing less.\n"
    "</system-reminder>"
)
THINKING = [
    ("The user wants the failing test fixed. Read it, then run it.", "EqMBCkYIBxgCKkBf0Sig1"),
    ("add() subtracts: the fix is one character in mathlib.py.", "ErUBCkYIBxgCKkCw7Sig2"),
    ("The edit is in; the test should pass now.", "EpYBCkYIBxgCKkD3Sig3"),
]


def thinking(n: int) -> dict[str, Any]:
    value, signature = THINKING[n]
    return {"type": "thinking", "thinking": value, "signature": signature}


READ = tool_use("toolu_01Read", "Read", {"file_path": "/repo/tests/test_math.py"})
BASH = tool_use(
    "toolu_02Bash",
    "Bash",
    {"command": "pytest -q tests/test_math.py", "description": "Run the failing test"},
)
EDIT = tool_use(
    "toolu_03Edit",
    "Edit",
    {"file_path": "/repo/mathlib.py", "old_string": "return a - b", "new_string": "return a + b"},
)
FILE_LINES = "     1\tfrom mathlib import add\n     2\t\n     3\tdef test_add():\n"
FILE_ASSERT = "     4\t    assert add(1, 2) == 3\n"
BASH_ERROR = "Exit code 1\nFAILED tests/test_math.py::test_add - assert -1 == 3"
EDITED = "The file /repo/mathlib.py has been updated."

# The user turns of the loop, and the assistant turns Anthropic answered them with (which the
# next request sends back, thinking and signatures included).
USER_TURNS: list[dict[str, Any]] = [
    {
        "role": "user",
        "content": [
            text(REMINDER),
            {
                "type": "text",
                "text": "The test in tests/test_math.py fails. Fix it.",
                "cache_control": {"type": "ephemeral"},
            },
        ],
    },
    {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_01Read",
                "content": [text(FILE_LINES), text(FILE_ASSERT)],
            },
            {
                "type": "tool_result",
                "tool_use_id": "toolu_02Bash",
                "content": BASH_ERROR,
                "is_error": True,
            },
        ],
    },
    {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_03Edit", "content": EDITED},
            {
                "type": "text",
                "text": "Thanks, is that all?",
                "cache_control": {"type": "ephemeral"},
            },
        ],
    },
]
ASSISTANT_TURNS: list[list[dict[str, Any]]] = [
    [thinking(0), text("I'll read the test and run it."), READ, BASH],
    [thinking(1), EDIT],
    [thinking(2), text("Fixed: `add` subtracted instead of adding. The test passes.")],
]
STOP_REASONS = ["tool_use", "tool_use", "end_turn"]


def claude_code_body(model: str, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": model,
        "messages": copy.deepcopy(history),
        "temperature": 1,
        "system": SYSTEM,
        "tools": TOOLS,
        "metadata": {"user_id": USER_ID},
        "max_tokens": 32000,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "stream": True,
    }


# --- the upstreams -------------------------------------------------------------------------


class ClaudeUpstream(FakeAnthropic):
    """The fake Anthropic API as Claude Code's requests need it: it takes `thinking` (checking
    the budget against `max_tokens`, as the API does) and streams thinking blocks (thinking
    deltas, then the signature). It spells its JSON with spaces after `:` and `,`, which no
    encoder of the gateway writes, so a re-encoded event would show, and it keeps the bytes of
    every stream it sent in `streams`."""

    def __init__(self) -> None:
        super().__init__(ANTHROPIC_KEY)
        self.streams: list[bytes] = []

    def _problem(self, request: web.Request, body: Any) -> tuple[int, str] | None:
        if isinstance(body, dict) and "thinking" in body:
            budget = body["thinking"].get("budget_tokens")
            if isinstance(budget, int) and budget >= body.get("max_tokens", 0):
                return 400, "`max_tokens` must be greater than `thinking.budget_tokens`"
            body = {key: value for key, value in body.items() if key != "thinking"}
        return super()._problem(request, body)

    def _events(self, reply: Reply, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        start = {"type": "message_start", "message": self._message(reply, body, streaming=True)}
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", start),
            ("ping", {"type": "ping"}),
        ]
        for index, block in enumerate(reply.content):
            deltas: list[dict[str, Any]]
            if block["type"] == "thinking":
                opened: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
                deltas = [{"type": "thinking_delta", "thinking": block["thinking"]}]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            elif block["type"] == "text":
                opened = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": piece} for piece in halves(block["text"])]
            else:
                opened = {**block, "input": {}}
                whole = json.dumps(block["input"])
                deltas = [{"type": "input_json_delta", "partial_json": p} for p in halves(whole)]
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": opened},
                )
            )
            events += [
                ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
                for d in deltas
            ]
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        delta = {"stop_reason": reply.stop_reason, "stop_sequence": None}
        usage = {"output_tokens": reply.output_tokens}
        events.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    async def _stream(
        self, request: web.Request, reply: Reply, body: dict[str, Any]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "request-id": "req_cc"}
        )
        await response.prepare(request)
        self.streams.append(b"")
        for name, payload in self._events(reply, body):
            event = f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
            self.streams[-1] += event
            await response.write(event)
        await response.write_eof()
        return response


def halves(whole: str) -> list[str]:
    middle = len(whole) // 2
    return [whole[:middle], whole[middle:]]


@pytest.fixture
async def claude_upstream() -> AsyncIterator[ClaudeUpstream]:
    fake = ClaudeUpstream()
    await fake.start()
    yield fake
    await fake.stop()


def claude_code_config(openai_url: str, anthropic_url: str, usage_path: Path) -> dict[str, Any]:
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
    raw["aliases"][NATIVE_MODEL] = "native"
    raw["aliases"][TRANSLATED_MODEL] = "fast"
    raw["usage"] = {"sinks": {"jsonl": str(usage_path)}}
    return raw


@pytest.fixture
async def gateway(
    upstream: FakeOpenAI,
    claude_upstream: ClaudeUpstream,
    start_gateway: StartGateway,
    tmp_path: Path,
) -> GatewayServer:
    return await start_gateway(
        claude_code_config(upstream.url, claude_upstream.url, tmp_path / "usage.jsonl")
    )


# What the native upstream answers each request of the loop with: the assistant turns, and
# usage as a cached conversation grows (cache writes, then reads).
NATIVE_REPLIES = [
    Reply(
        content=content,
        stop_reason=stop,
        input_tokens=3 + n,
        cache_creation_input_tokens=1500 * (n + 1),
        cache_read_input_tokens=9000 * n,
        output_tokens=120 + n,
    )
    for n, (content, stop) in enumerate(zip(ASSISTANT_TURNS, STOP_REASONS, strict=True))
]


def chat_calls(*blocks: dict[str, Any]) -> list[dict[str, str]]:
    return [{"id": b["id"], "name": b["name"], "arguments": json.dumps(b["input"])} for b in blocks]


TRANSLATED_REPLIES = [
    Behaviour(
        words=["I'll", " read", " the", " test", " and", " run", " it."],
        tool_calls=chat_calls(READ, BASH),
        prompt_tokens=4100,
        cached_tokens=4000,
        completion_tokens=61,
    ),
    Behaviour(words=[], tool_calls=chat_calls(EDIT), prompt_tokens=4300, completion_tokens=40),
    Behaviour(
        words=[
            "Fixed:",
            " `add`",
            " subtracted",
            " instead",
            " of",
            " adding.",
            " The test passes.",
        ],
        prompt_tokens=4400,
        cached_tokens=4200,
        completion_tokens=7,
    ),
]


# --- reading Anthropic streams -------------------------------------------------------------


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Every event of a Messages stream: `event:` then `data:`, its name its `type`."""
    events = []
    for chunk in raw.decode().split("\n\n"):
        if not chunk.strip():
            continue
        lines = chunk.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: "), chunk
        assert lines[1].startswith("data: "), chunk
        name, payload = lines[0][7:], json.loads(lines[1][6:])
        assert payload["type"] == name
        events.append((name, payload))
    return events


_DELTA_FIELDS = {
    "text": {"text_delta": "text"},
    "thinking": {"thinking_delta": "thinking", "signature_delta": "signature"},
    "tool_use": {"input_json_delta": "partial_json"},
}


def assemble(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The message a stream builds, checking it is Anthropic's sequence: one `message_start`
    first, then blocks numbered from 0, each started, grown by deltas of its own kind and
    stopped before the next starts, then one `message_delta` and `message_stop` last (`ping`
    anywhere)."""
    names = [name for name, _ in events if name != "ping"]
    assert names[0] == "message_start" and names.count("message_start") == 1, names
    assert names[-2:] == ["message_delta", "message_stop"], names
    assert names.count("message_delta") == names.count("message_stop") == 1, names
    message: dict[str, Any] = copy.deepcopy(events[0][1]["message"])
    content: list[dict[str, Any]] = []
    open_index: int | None = None
    partial = ""
    for name, payload in events[1:]:
        if name == "content_block_start":
            assert open_index is None and payload["index"] == len(content), payload
            content.append(copy.deepcopy(payload["content_block"]))
            open_index, partial = payload["index"], ""
        elif name == "content_block_delta":
            assert open_index is not None and payload["index"] == open_index, payload
            block, delta = content[open_index], payload["delta"]
            field = _DELTA_FIELDS[block["type"]][delta["type"]]
            if field == "partial_json":
                partial += delta[field]
            elif field == "signature":
                block["signature"] = delta["signature"]
            else:
                block[field] += delta[field]
        elif name == "content_block_stop":
            assert open_index is not None and payload["index"] == open_index, payload
            if content[open_index]["type"] == "tool_use":
                content[open_index]["input"] = json.loads(partial) if partial else {}
            open_index = None
        elif name == "message_delta":
            assert open_index is None, "message_delta with a block still open"
            message.update(payload["delta"])
            message["usage"].update(payload["usage"])
        else:
            assert name in ("ping", "message_stop"), name
    message["content"] = content
    return message


@dataclass
class Exchange:
    sent: dict[str, Any]  # the body Claude Code sent
    headers: dict[str, str]  # the gateway's answer headers
    raw: bytes  # the stream as the client got it
    events: list[tuple[str, dict[str, Any]]]
    message: dict[str, Any]  # what the stream builds


async def replay(gateway: GatewayServer, model: str) -> list[Exchange]:
    """The agent loop: each request sends the whole history so far, as Claude Code does."""
    exchanges = []
    history: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        for n, user_turn in enumerate(USER_TURNS):
            history.append(user_turn)
            body = claude_code_body(model, history)
            async with http.post(
                gateway.url + "/v1/messages?beta=true", data=json.dumps(body), headers=HEADERS
            ) as answer:
                raw = await answer.read()
                assert answer.status == 200, raw
                assert answer.headers["Content-Type"].startswith("text/event-stream")
                headers = dict(answer.headers)
            events = parse_sse(raw)
            exchanges.append(Exchange(body, headers, raw, events, assemble(events)))
            history.append({"role": "assistant", "content": ASSISTANT_TURNS[n]})
    return exchanges


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


def without_thinking(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [block for block in blocks if block["type"] != "thinking"]


# --- native --------------------------------------------------------------------------------


async def test_native_replay_is_passed_through_untouched(
    gateway: GatewayServer, claude_upstream: ClaudeUpstream, upstream: FakeOpenAI
) -> None:
    claude_upstream.next(*NATIVE_REPLIES)
    exchanges = await replay(gateway, NATIVE_MODEL)

    assert len(claude_upstream.requests) == 3 and not upstream.requests
    for n, (exchange, seen) in enumerate(zip(exchanges, claude_upstream.requests, strict=True)):
        # The body as Claude Code sent it, but for the model: thinking blocks with their
        # signatures, cache_control, metadata, tool results, all as they were.
        assert seen.body == {**exchange.sent, "model": "claude-up-id"}
        assert seen.headers["anthropic-beta"] == BETAS
        assert seen.headers["anthropic-version"] == "2023-06-01"
        assert seen.headers["x-api-key"] == ANTHROPIC_KEY  # the provider's key, not the app's
        assert "x-app" not in seen.headers and "anthropic-dangerous-direct-browser-access" not in (
            seen.headers
        )
        # The upstream's events, byte for byte, and what they build is what Anthropic said.
        assert exchange.raw == claude_upstream.streams[n]
        assert exchange.message["content"] == ASSISTANT_TURNS[n]
        assert exchange.message["stop_reason"] == STOP_REASONS[n]
        assert exchange.message["model"] == "claude-up-id"
        assert exchange.headers["x-gateway-tier"] == "native"
        assert exchange.headers["x-gateway-model"] == "claude-up"
    last = claude_upstream.requests[-1].body
    assert last["messages"][1]["content"][0] == thinking(0)
    assert last["messages"][3]["content"] == [thinking(1), EDIT]
    assert last["system"] == SYSTEM and last["tools"] == TOOLS
    assert last["messages"][2] == USER_TURNS[1]  # the failed result and the text blocks

    found = await flushed_records(gateway, 3)
    for record, reply in zip(found, NATIVE_REPLIES, strict=True):
        assert record["api"] == "messages" and record["user"] == USER_ID
        assert (record["key"], record["tier"], record["model"]) == ("app", "native", "claude-up")
        assert record["stream"] is True and record["status"] == 200
        prompt = (
            reply.input_tokens + reply.cache_read_input_tokens + reply.cache_creation_input_tokens
        )
        assert (record["prompt_tokens"], record["completion_tokens"]) == (
            prompt,
            reply.output_tokens,
        )
        assert record["cached_tokens"] == reply.cache_read_input_tokens
        assert not record["estimated"] and not record["cut"]


# --- translated ----------------------------------------------------------------------------


def expected_tools() -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": t["name"],
                "description": t["description"],
                "parameters": t["input_schema"],
            },
        }
        for t in TOOLS
    ]


def chat_tool_call(block: dict[str, Any]) -> dict[str, Any]:
    arguments = json.dumps(block["input"], separators=(",", ":"))
    return {
        "id": block["id"],
        "type": "function",
        "function": {"name": block["name"], "arguments": arguments},
    }


async def test_translated_replay_reaches_a_chat_model_as_chat(
    gateway: GatewayServer, claude_upstream: ClaudeUpstream, upstream: FakeOpenAI
) -> None:
    upstream.next(*TRANSLATED_REPLIES)
    exchanges = await replay(gateway, TRANSLATED_MODEL)

    assert len(upstream.requests) == 3 and not claude_upstream.requests
    for n, (exchange, seen) in enumerate(zip(exchanges, upstream.requests, strict=True)):
        sent = seen.body
        assert sent["model"] == "upstream-model-id"
        assert sent["messages"][0] == {"role": "system", "content": SYSTEM_TEXT}
        assert sent["tools"] == expected_tools()
        assert "tool_choice" not in sent  # none was asked: chat's default is auto too
        assert sent["user"] == USER_ID
        assert (sent["max_tokens"], sent["temperature"]) == (32000, 1)
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
        # Nothing a chat upstream cannot take: no thinking (the model is not a reasoning
        # one), no signatures, no cache_control, no Anthropic headers.
        assert "thinking" not in sent and "reasoning_effort" not in sent
        dumped = json.dumps(sent)
        assert "cache_control" not in dumped and "signature" not in dumped
        assert not any(value in dumped for value, _ in THINKING)
        assert seen.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert "anthropic-beta" not in seen.headers
        # The client gets an Anthropic message: the model it asked for, the blocks the
        # upstream's deltas and calls make, in order, and Anthropic's stop reason.
        assert exchange.message["id"].startswith("msg_")
        assert exchange.message["model"] == TRANSLATED_MODEL
        assert exchange.message["content"] == without_thinking(ASSISTANT_TURNS[n])
        assert exchange.message["stop_reason"] == STOP_REASONS[n]
        assert exchange.headers["x-gateway-tier"] == "fast"
        assert exchange.headers["x-gateway-model"] == "gpt-up"

    user_1 = {
        "role": "user",
        "content": [text(REMINDER), text(USER_TURNS[0]["content"][1]["text"])],
    }
    assert upstream.requests[0].body["messages"] == [
        {"role": "system", "content": SYSTEM_TEXT},
        user_1,
    ]
    assert upstream.requests[-1].body["messages"] == [
        {"role": "system", "content": SYSTEM_TEXT},
        user_1,
        {
            "role": "assistant",
            "content": "I'll read the test and run it.",
            "tool_calls": [chat_tool_call(READ), chat_tool_call(BASH)],
        },
        # Tool results in order, each answering its call; text blocks joined, the failure
        # marked, since chat has no is_error.
        {
            "role": "tool",
            "tool_call_id": "toolu_01Read",
            "content": FILE_LINES + "\n" + FILE_ASSERT,
        },
        {"role": "tool", "tool_call_id": "toolu_02Bash", "content": "Error: " + BASH_ERROR},
        {"role": "assistant", "content": None, "tool_calls": [chat_tool_call(EDIT)]},
        {"role": "tool", "tool_call_id": "toolu_03Edit", "content": EDITED},
        {"role": "user", "content": "Thanks, is that all?"},
    ]

    # The first answer's stream, event by event: text, then each tool call as its own block.
    first = [(name, payload) for name, payload in exchanges[0].events if name != "ping"]
    shape = [
        (name, payload.get("index"), payload.get("content_block", {}).get("type"))
        for name, payload in first
    ]
    words = len(TRANSLATED_REPLIES[0].words)
    assert shape == [
        ("message_start", None, None),
        ("content_block_start", 0, "text"),
        *[("content_block_delta", 0, None)] * words,
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "tool_use"),
        ("content_block_delta", 1, None),
        ("content_block_delta", 1, None),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"),
        ("content_block_delta", 2, None),
        ("content_block_delta", 2, None),
        ("content_block_stop", 2, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    deltas = [payload["delta"] for name, payload in first if name == "content_block_delta"]
    assert [d["text"] for d in deltas[:words]] == TRANSLATED_REPLIES[0].words
    assert {d["type"] for d in deltas[words:]} == {"input_json_delta"}
    starts = [payload["content_block"] for name, payload in first if name == "content_block_start"]
    assert starts == [
        {"type": "text", "text": ""},
        {"type": "tool_use", "id": "toolu_01Read", "name": "Read", "input": {}},
        {"type": "tool_use", "id": "toolu_02Bash", "name": "Bash", "input": {}},
    ]
    message_delta = first[-2][1]
    assert message_delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert message_delta["usage"]["output_tokens"] == 61
    assert message_delta["usage"]["input_tokens"] == 100  # cache reads apart, as Anthropic does
    assert message_delta["usage"]["cache_read_input_tokens"] == 4000

    found = await flushed_records(gateway, 3)
    for record, behaviour in zip(found, TRANSLATED_REPLIES, strict=True):
        assert record["api"] == "messages" and record["user"] == USER_ID
        assert (record["key"], record["tier"], record["model"]) == ("app", "fast", "gpt-up")
        assert record["stream"] is True and record["status"] == 200
        assert (record["prompt_tokens"], record["completion_tokens"]) == (
            behaviour.prompt_tokens,
            behaviour.completion_tokens,
        )
        assert record["cached_tokens"] == behaviour.cached_tokens
        assert not record["estimated"]


# --- the SDK -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [NATIVE_MODEL, TRANSLATED_MODEL])
async def test_the_sdk_beta_client_replays_the_last_request(
    model: str, gateway: GatewayServer, claude_upstream: ClaudeUpstream, upstream: FakeOpenAI
) -> None:
    """The anthropic SDK's beta client, as Claude Code's own client is: `?beta=true`, the betas
    as `anthropic-beta`; it reads the stream into a message."""
    claude_upstream.next(NATIVE_REPLIES[2])  # the last answers, to the whole history
    upstream.next(TRANSLATED_REPLIES[2])
    history: list[dict[str, Any]] = []
    for user_turn, assistant_turn in zip(USER_TURNS, ASSISTANT_TURNS, strict=True):
        history += [user_turn, {"role": "assistant", "content": assistant_turn}]
    body = claude_code_body(model, history[:-1])
    del body["stream"]
    extra = {"temperature": body.pop("temperature")}  # this SDK has no parameter for it
    sent: list[Any] = []  # the SDK's own (httpx) requests

    async def note(request: Any) -> None:
        sent.append(request)

    async with (
        anthropic.DefaultAsyncHttpxClient(event_hooks={"request": [note]}) as http,
        anthropic.AsyncAnthropic(
            base_url=gateway.url, api_key=APP_KEY, max_retries=0, timeout=20, http_client=http
        ) as sdk,
        sdk.beta.messages.stream(
            **body,
            betas=BETAS.split(","),
            extra_body=extra,
            extra_query={"beta": "true"},  # what the sync client adds itself, and Claude Code
        ) as stream,
    ):
        final = await stream.get_final_message()

    (request,) = sent
    assert request.url.path == "/v1/messages" and request.url.query == b"beta=true"
    # This SDK sends the key as a bearer token (the raw replay above sends `x-api-key`).
    assert APP_KEY in (
        request.headers.get("x-api-key"),
        (request.headers.get("authorization") or "")[7:],
    )
    assert request.headers["anthropic-beta"] == BETAS
    assert final.stop_reason == "end_turn"
    content = [block.model_dump(exclude_none=True) for block in final.content]
    if model == NATIVE_MODEL:
        assert content == ASSISTANT_TURNS[2]
        (seen,) = claude_upstream.requests
        assert seen.headers["anthropic-beta"] == BETAS
        assert seen.body["messages"] == history[:-1]
        assert seen.body["temperature"] == 1
        assert seen.body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    else:
        assert content == without_thinking(ASSISTANT_TURNS[2])
        assert [m["role"] for m in upstream.requests[-1].body["messages"]] == [
            "system",
            "user",
            "assistant",
            "tool",
            "tool",
            "assistant",
            "tool",
            "user",
        ]
