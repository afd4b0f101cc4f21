"""A Responses API request → a Chat Completions request body. Pure: dict in, dict out.

The chat body carries only what a chat upstream understands the same way; everything else is
dropped rather than passed on, because a chat upstream would reject or misread it:

- `instructions` → the first, `system`, message (then the caller's `history`, then `input`).
  `developer` becomes `system` too: chat-compatible servers (vLLM, Ollama, Anthropic through
  the gateway's translator) all know `system`, not all know `developer`.
- input items: messages (parts `input_text`/`output_text` → `text`, `input_image` with an
  `image_url` → an `image_url` part; `input_file`, and images given only by `file_id`, which a
  non-OpenAI upstream cannot fetch, are dropped), `function_call` → assistant `tool_calls`
  (joined onto the assistant message just before them, so one model turn stays one chat
  message), `function_call_output` → a `tool` message; `reasoning`, `item_reference` and hosted
  tool items are dropped.
- function tools → chat tools; hosted tools (web_search, file_search, ...) are dropped, and with
  no tool left so are `tool_choice` and `parallel_tool_calls` (chat refuses them without tools).
- `text.format` → `response_format`; `reasoning.effort` → `reasoning_effort` only for upstreams
  that take it (`reasoning=True`); `max_output_tokens` → `max_tokens`.
- `metadata` is dropped: on chat it is only accepted together with `store`.
"""

from __future__ import annotations

from typing import Any

# Request fields copied unchanged: same name, same meaning in both APIs.
_COPIED = ("model", "temperature", "top_p", "user")
_TOOL_CHOICE_MODES = ("auto", "none", "required")


class InvalidRequest(ValueError):
    """The request's shape is wrong in a way no upstream could serve: the caller answers 400
    `invalid_request_error` with this message and `param`."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def chat_request(
    body: dict[str, Any],
    history: list[dict[str, Any]] | None = None,
    *,
    reasoning: bool = False,
) -> dict[str, Any]:
    """The chat completions body for a Responses request.

    `history` is the conversation so far as chat messages (see `history_messages`), placed
    after the instructions: `previous_response_id`'s instructions are not carried over, as on
    OpenAI. `reasoning` says whether the upstream takes `reasoning_effort`.
    """
    messages = instruction_messages(body.get("instructions"))
    messages.extend(history or ())
    messages.extend(input_messages(body))
    out: dict[str, Any] = {key: body[key] for key in _COPIED if body.get(key) is not None}
    out["messages"] = messages
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    tools = chat_tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        tool_choice = chat_tool_choice(body.get("tool_choice"))
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            out["parallel_tool_calls"] = body["parallel_tool_calls"]
    response_format = chat_response_format(body.get("text"))
    if response_format is not None:
        out["response_format"] = response_format
    effort = _reasoning_effort(body.get("reasoning"))
    if reasoning and effort is not None:
        out["reasoning_effort"] = effort
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def instruction_messages(instructions: Any) -> list[dict[str, Any]]:
    """`instructions` as leading messages: a string is one system message; the list form
    (input items, as the spec allows) is translated like `input`."""
    if instructions is None or instructions == "":
        return []
    if isinstance(instructions, str):
        return [{"role": "system", "content": instructions}]
    if isinstance(instructions, list):
        return items_to_messages(instructions, param="instructions")
    raise InvalidRequest("'instructions' must be a string or a list of input items", "instructions")


def input_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat messages for `input` alone (no instructions, no history): what the caller
    stores with the response, so that a later `previous_response_id` can replay this turn."""
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return items_to_messages(value, param="input")
    raise InvalidRequest("'input' must be a string or a list of input items", "input")


def history_messages(
    stored_input_messages: list[dict[str, Any]], stored_output_items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The conversation up to and including a stored response, as chat messages.

    `stored_input_messages` are the chat messages that response was asked with (its own
    history plus its `input_messages`, which is what the caller should store so that chains of
    `previous_response_id` keep every turn); its output items (assistant messages and function
    calls) are valid input items, so they translate like input.
    """
    messages = [dict(message) for message in stored_input_messages]
    _append_items(messages, stored_output_items, param="output")
    return messages


def items_to_messages(items: list[Any], *, param: str) -> list[dict[str, Any]]:
    """Input items → chat messages, in order."""
    messages: list[dict[str, Any]] = []
    _append_items(messages, items, param=param)
    return messages


def _append_items(messages: list[dict[str, Any]], items: list[Any], *, param: str) -> None:
    # Tool calls join the assistant message before them only while that message is the last
    # one and came from this run of items: a turn is [message?, function_call*].
    joinable: dict[str, Any] | None = None
    for position, item in enumerate(items):
        where = f"{param}[{position}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"'{where}' must be an object", where)
        kind = item.get("type", "message")
        if kind == "message":
            message = _message(item, where)
            joinable = message if message and message["role"] == "assistant" else None
            if message:
                messages.append(message)
        elif kind == "function_call":
            if joinable is None:
                joinable = {"role": "assistant", "content": None}
                messages.append(joinable)
            joinable.setdefault("tool_calls", []).append(_tool_call(item))
        elif kind == "function_call_output":
            joinable = None
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item.get("call_id", "")),
                    "content": _output_text(item.get("output")),
                }
            )
        # reasoning, item_reference and hosted-tool items have no chat form: dropped.


def _message(item: dict[str, Any], where: str) -> dict[str, Any] | None:
    """One message item; None when nothing of it is left to send (only files, say)."""
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequest(
            f"'{where}.role' must be one of user, assistant, system, developer", f"{where}.role"
        )
    chat_role = "system" if role == "developer" else role
    content = item.get("content")
    if isinstance(content, str):
        return {"role": chat_role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}.content' must be a string or a list", f"{where}.content")
    parts = [part for part in map(_content_part, content) if part is not None]
    if not parts:
        return None
    if all(part["type"] == "text" for part in parts) and (len(parts) == 1 or chat_role != "user"):
        # A plain string is what every chat server takes, for every role.
        return {"role": chat_role, "content": "".join(part["text"] for part in parts)}
    return {"role": chat_role, "content": parts}


def _content_part(part: Any) -> dict[str, Any] | None:
    if not isinstance(part, dict):
        return None
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": str(part.get("text", ""))}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal", ""))}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            return None  # a file_id names an OpenAI file no other upstream can read
        image: dict[str, Any] = {"url": url}
        if part.get("detail") in ("auto", "low", "high"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    return None  # input_file, input_audio, ...


def _tool_call(item: dict[str, Any]) -> dict[str, Any]:
    arguments = item.get("arguments")
    return {
        "id": str(item.get("call_id", "")),
        "type": "function",
        "function": {
            "name": str(item.get("name", "")),
            "arguments": arguments if isinstance(arguments, str) else "{}",
        },
    }


def _output_text(output: Any) -> str:
    """A tool output: a string, or a list of content parts of which only text survives."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        parts = (_content_part(part) for part in output)
        return "".join(part["text"] for part in parts if part and part["type"] == "text")
    return ""


def chat_tools(tools: Any) -> list[dict[str, Any]]:
    """Function tools in chat's nested form; other tool types have no chat equivalent."""
    out: list[dict[str, Any]] = []
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        function: dict[str, Any] = {"name": tool.get("name")}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any) -> str | dict[str, Any] | None:
    if choice in _TOOL_CHOICE_MODES:
        return str(choice)
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return None  # allowed_tools, hosted tool types: not expressible for a chat upstream


def chat_response_format(text: Any) -> dict[str, Any] | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema":
        schema: dict[str, Any] = {"name": fmt.get("name"), "schema": fmt.get("schema")}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}
    return None  # text: chat's default


def _reasoning_effort(reasoning: Any) -> str | None:
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    return effort if isinstance(effort, str) else None
