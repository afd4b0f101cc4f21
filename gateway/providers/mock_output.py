"""What the mock answers a chat request with besides prose: a tool call, or JSON content.

Decided from the request the way a model is told to decide: `tools` with `tool_choice`
("none": prose; "auto" or absent, "required": a call; a named function: that function;
`allowed_tools`: one of those), and `response_format` (`json_schema`, strict or not, or
`json_object`). Under "auto", a conversation whose last message is a tool result gets prose
instead of another call, so that agent loops end. The tool called is the one whose name the
last user message mentions most, else the first; its arguments are generated from its JSON
schema. Everything is chosen by the seed, so the same request always gets the same answer.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.providers.mock_json import sample_json
from gateway.tokens import text_tokens

# Roughly how a tokenizer cuts JSON: words, numbers, runs of punctuation, whitespace. Each
# piece is one streamed delta and counts as one completion token.
_PIECE = re.compile(r"[A-Za-z]+|[0-9]+|\s+|[^A-Za-z0-9\s]+")
_NAME_PART = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


def pieces(text: str) -> list[str]:
    """`text` cut into the deltas it is streamed as."""
    return _PIECE.findall(text)


def tool_call(body: dict[str, Any], seed: int, last_user_text: str) -> ToolCall | None:
    """The call this request gets, or None when it gets content."""
    tool = _tool_to_call(body, last_user_text)
    if tool is None:
        return None
    name = tool["name"]
    parameters = tool.get("parameters")
    arguments = sample_json(parameters if isinstance(parameters, dict) else _EMPTY_PARAMETERS, seed)
    digest = hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()
    return ToolCall(f"call_{digest[:24]}", name, orjson.dumps(arguments).decode())


def json_content(body: dict[str, Any], seed: int, prose: str) -> str | None:
    """The JSON content `response_format` asks for (None: prose). `json_object` gets
    `{"answer": prose}`."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    kind = fmt.get("type")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if isinstance(schema, dict):
            return orjson.dumps(sample_json(schema, seed)).decode()
        kind = "json_object"  # a json_schema without a schema: any JSON object
    if kind == "json_object":
        return orjson.dumps({"answer": prose}).decode()
    return None


def structured_prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt tokens the tool definitions and the asked-for schema add, as a model counts
    them into its prompt."""
    total = 0
    for field in ("tools", "response_format"):
        value = body.get(field)
        if value:
            total += text_tokens(orjson.dumps(value).decode())
    return total


def _function_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    return [
        tool["function"]
        for tool in tools
        if isinstance(tool, dict)
        and tool.get("type", "function") == "function"
        and isinstance(tool.get("function"), dict)
        and isinstance(tool["function"].get("name"), str)
    ]


def _tool_to_call(body: dict[str, Any], last_user_text: str) -> dict[str, Any] | None:
    tools = _function_tools(body)
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools")
        allowed = allowed if isinstance(allowed, dict) else {}
        names = {
            t.get("function", {}).get("name") if t.get("type") == "function" else t.get("name")
            for t in allowed.get("tools") or []
            if isinstance(t, dict)
        }
        tools = [tool for tool in tools if tool["name"] in names]
        choice = allowed.get("mode", "auto")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        function = choice.get("function")
        wanted = function.get("name") if isinstance(function, dict) else choice.get("name")
        return next((tool for tool in tools if tool["name"] == wanted), None)
    if choice != "required" and _after_tool_result(body):
        return None  # "auto": the results are in; answer them
    return _likeliest(tools, last_user_text)


def _after_tool_result(body: dict[str, Any]) -> bool:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return False
    last = messages[-1]
    return isinstance(last, dict) and last.get("role") in ("tool", "function")


def _likeliest(tools: list[dict[str, Any]], text: str) -> dict[str, Any]:
    """The tool whose name's words the user mentioned most; the first on a tie."""
    said = {word.lower() for word in re.findall(r"[A-Za-z0-9]+", text)}

    def score(tool: dict[str, Any]) -> int:
        parts = {part.lower() for part in _NAME_PART.findall(tool["name"])}
        return len(parts & said)

    return max(tools, key=score)  # max keeps the first of equal scores
