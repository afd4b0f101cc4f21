"""OpenAI Chat Completions request → Anthropic Messages request. Pure: dict in, dict out.

What does not map is either dropped (sampling knobs Anthropic lacks: `frequency_penalty`,
`presence_penalty`, `logit_bias`, `seed`, OpenAI's string-valued `metadata`, ...) or, when
dropping it would change the answer the client gets (`n` > 1, `logprobs`, audio input), refused
with a 400 the client can act on.

`response_format: json_schema` becomes a forced tool named after the schema (Anthropic's
reliable way to get schema-shaped JSON on every model); the response translators turn that
tool's input back into the message `content`. `json_object` becomes a system instruction.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind

JSON_OBJECT_INSTRUCTION = (
    "Respond only with a single valid JSON object. Do not add any text before or after it."
)
STRUCTURED_TOOL_DESCRIPTION = (
    "Give your final answer by calling this tool; its input is the answer, "
    "matching this schema exactly."
)

_DATA_URL = re.compile(r"^data:(?P<media>[^;,]+)(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.S)


def invalid_request(message: str, param: str | None = None) -> UpstreamFailure:
    """A request Anthropic cannot serve as asked: a clear 400, never a silent drop, unless
    another model of the chain can serve it (kind `unsupported` lets routing move on)."""
    error: dict[str, Any] = {"message": message, "type": "invalid_request_error", "param": param}
    return UpstreamFailure(FailureKind.UNSUPPORTED, message, status=400, upstream_error=error)


def structured_tool_name(body: dict[str, Any]) -> str | None:
    """The tool that stands for `response_format: json_schema`, when the request has one."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    schema = response_format.get("json_schema")
    name = schema.get("name") if isinstance(schema, dict) else None
    return name if isinstance(name, str) and name else "json_response"


def translate_request(body: dict[str, Any], *, default_max_tokens: int) -> dict[str, Any]:
    """The Anthropic Messages body for an OpenAI chat completion body."""
    _refuse_unsupported(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request("'messages' must be a non-empty array", "messages")

    system, turns = translate_messages(messages)
    out: dict[str, Any] = {"model": body.get("model")}

    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_object":
        system.append(JSON_OBJECT_INSTRUCTION)
    if system:
        out["system"] = "\n\n".join(system)
    out["messages"] = turns

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    out["max_tokens"] = default_max_tokens if max_tokens is None else max_tokens

    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            out[name] = body[name]
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}

    tools, tool_choice = translate_tools(body)
    if tools:
        out["tools"] = tools
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
    if body.get("stream"):
        out["stream"] = True
    return out


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise invalid_request("Anthropic models return one choice per request; 'n' must be 1", "n")
    if body.get("logprobs"):
        raise invalid_request("Anthropic models do not return log probabilities", "logprobs")
    if body.get("top_logprobs") is not None:
        raise invalid_request("Anthropic models do not return log probabilities", "top_logprobs")
    if body.get("audio") is not None or "audio" in (body.get("modalities") or []):
        raise invalid_request("Anthropic models do not produce audio", "modalities")


# --- messages ------------------------------------------------------------------------------


def translate_messages(messages: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """System texts, and user/assistant turns that alternate as Anthropic requires."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid_request(f"{where} must be an object", where)
        role = message.get("role")
        if role in ("system", "developer"):
            text = _plain_text(message.get("content"), where)
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), where)
            anthropic_role = "user"
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
            anthropic_role = "assistant"
        elif role == "tool":
            blocks = [_tool_result(message, where)]
            anthropic_role = "user"
        else:
            raise invalid_request(f"{where}: role {role!r} is not supported", f"{where}.role")
        if not blocks:
            continue  # an empty turn: leaving it out keeps the neighbours alternating
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"].extend(blocks)  # parallel tool results become one turn
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    for turn in turns:
        content = turn["content"]
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    return system, turns


def _plain_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                raise invalid_request(
                    f"{where}.content[{j}]: only text parts are allowed here",
                    f"{where}.content",
                )
            texts.append(str(part.get("text") or part.get("refusal") or ""))
        return "\n".join(t for t in texts if t)
    raise invalid_request(f"{where}.content must be a string or an array", f"{where}.content")


def _text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [_text_block(content)] if content else []
    if not isinstance(content, list):
        raise invalid_request(f"{where}.content must be a string or an array", f"{where}.content")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        place = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append(_text_block(str(part["text"])))
        elif kind == "image_url":
            blocks.append(_image_block(part.get("image_url"), place))
        elif kind == "file":
            blocks.append(_document_block(part.get("file"), place))
        else:
            raise invalid_request(f"{place}: content part type {kind!r} is not supported", place)
    return blocks


def _image_block(image: Any, place: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise invalid_request(f"{place}: image_url.url is missing", place)
    if url.startswith("data:"):
        media_type, data = _parse_data_url(url, place)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    return {"type": "image", "source": {"type": "url", "url": url}}


def _document_block(file: Any, place: str) -> dict[str, Any]:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str):
        raise invalid_request(f"{place}: only inline files (file_data) are supported", place)
    if not data_url.startswith("data:"):
        data_url = "data:application/pdf;base64," + data_url
    media_type, data = _parse_data_url(data_url, place)
    if media_type != "application/pdf":
        raise invalid_request(f"{place}: only PDF files are supported, not {media_type}", place)
    return {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }


def _parse_data_url(url: str, place: str) -> tuple[str, str]:
    match = _DATA_URL.match(url)
    if match is None or ";base64" not in match.group("params"):
        raise invalid_request(f"{place}: a data URL must be base64-encoded", place)
    return match.group("media"), match.group("data")


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    text = _plain_text(message.get("content"), where)
    blocks = [_text_block(text)] if text else []
    tool_calls = message.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise invalid_request(f"{where}.tool_calls must be an array", f"{where}.tool_calls")
    for j, call in enumerate(tool_calls):
        place = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not call.get("id") or not function.get("name"):
            raise invalid_request(f"{place} needs an id and a function name", place)
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": _arguments(function.get("arguments"), f"{place}.function.arguments"),
            }
        )
    return blocks


def _arguments(arguments: Any, place: str) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    try:
        parsed = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        parsed = None
    if not isinstance(parsed, dict):
        raise invalid_request(f"{place} must be a JSON object", place)
    return parsed


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    tool_call_id = message.get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise invalid_request(f"{where}.tool_call_id is missing", f"{where}.tool_call_id")
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id}
    if isinstance(content, list):
        text = _plain_text(content, where)  # checks every part is text
        parts = [p for p in content if p.get("text")]
        block["content"] = [_text_block(str(p["text"])) for p in parts] if parts else text
    else:
        block["content"] = _plain_text(content, where)
    return block


# --- tools ---------------------------------------------------------------------------------


def translate_tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Anthropic `tools` and `tool_choice`, the json_schema answer tool included."""
    tools = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(body.get("tools") or [])]
    user_choice = body.get("tool_choice")
    choice = _tool_choice(user_choice) if tools else None
    disable_parallel = body.get("parallel_tool_calls") is False

    structured = structured_tool_name(body)
    if structured is not None:
        if any(tool["name"] == structured for tool in tools):
            raise invalid_request(
                f"response_format json_schema name {structured!r} clashes with a tool's name",
                "response_format",
            )
        has_user_tools = bool(tools) and (choice or {}).get("type") != "none"
        tools.append(_structured_tool(body["response_format"].get("json_schema")))
        if not has_user_tools:
            # Only the answer tool: force it, and exactly once.
            return tools, {"type": "tool", "name": structured, "disable_parallel_tool_use": True}
        if choice is None or choice["type"] in ("auto", "any"):
            # Call a real tool or give the structured answer, never free text.
            choice = {"type": "any"}

    if disable_parallel and tools:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    return tools, choice


def _tool(tool: Any, where: str) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise invalid_request(f"{where}: tool type {kind!r} is not supported", where)
    function = tool.get("function")
    if not isinstance(function, dict) or not function.get("name"):
        raise invalid_request(f"{where}.function.name is missing", f"{where}.function")
    out: dict[str, Any] = {
        "name": function["name"],
        "input_schema": _object_schema(function.get("parameters")),
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _object_schema(schema: Any) -> dict[str, Any]:
    # Anthropic wants an object schema; OpenAI accepts a tool with no parameters at all.
    if not isinstance(schema, dict) or not schema:
        return {"type": "object", "properties": {}}
    return schema if "type" in schema else {"type": "object", **schema}


def _structured_tool(json_schema: Any) -> dict[str, Any]:
    spec = json_schema if isinstance(json_schema, dict) else {}
    name = structured_tool_name({"response_format": {"type": "json_schema", "json_schema": spec}})
    return {
        "name": name,
        "description": spec.get("description") or STRUCTURED_TOOL_DESCRIPTION,
        "input_schema": _object_schema(spec.get("schema")),
    }


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return {"type": "tool", "name": name}
    raise invalid_request(f"tool_choice {choice!r} is not supported", "tool_choice")
