"""An Anthropic Messages request → a Chat Completions request body. Pure: dict in, dict out.

The chat body carries only what a chat upstream understands the same way. Everything else is
dropped, never refused, because Anthropic clients (Claude Code above all) send fields that
have no chat counterpart on every call and must still get an answer:

- `system` (a string or text blocks) → one leading `system` message; `cache_control` anywhere
  is dropped (chat upstreams cache on their own or not at all).
- user turns: text, images (base64 → a `data:` URL, url → the URL), text documents → text,
  base64 PDFs → a chat `file` part. `tool_result` blocks → `tool` messages, in order, placed
  before the rest of the turn, since chat wants each tool answer right after the assistant
  message that called it. A chat tool message holds text only, so images and PDFs inside a
  tool result move to the user message that follows the tool messages.
- assistant turns: text → `content`, `tool_use` → `tool_calls` (ids kept: the client sends
  them back in `tool_result.tool_use_id`); `thinking` / `redacted_thinking` are dropped, a
  chat upstream cannot verify or reuse them.
- custom tools → function tools; server tools (`type` other than `custom`) are dropped, and
  with no tool left so are `tool_choice` and `parallel_tool_calls` (chat refuses them alone).
- `thinking.budget_tokens` → `reasoning_effort` for upstreams that take it (`reasoning=True`).
- `top_k`, `metadata` (but `user_id` → `user`), `service_tier`, `container`, `mcp_servers`,
  `output_config`, `context_management` and unknown fields: dropped.

Only a body whose shape is wrong in a way no upstream could serve raises `InvalidRequest`
(`gateway.errors`), which the handler renders in Anthropic's dialect.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import InvalidRequest

# Request fields copied unchanged: same name, same meaning in both APIs.
_COPIED = ("model", "max_tokens", "temperature", "top_p")
# `thinking.budget_tokens` thresholds: below the first is low, below the second medium.
_MEDIUM_BUDGET = 4096
_HIGH_BUDGET = 16384
ERROR_PREFIX = "Error: "


def chat_request(body: dict[str, Any], *, reasoning: bool = False) -> dict[str, Any]:
    """The chat completions body for an Anthropic Messages body. `model` is kept as given
    (the caller replaces it); `reasoning` says whether the upstream takes `reasoning_effort`."""
    out: dict[str, Any] = {key: body[key] for key in _COPIED if body.get(key) is not None}
    messages = system_messages(body.get("system"))
    messages.extend(chat_messages(body.get("messages")))
    out["messages"] = messages
    stop = body.get("stop_sequences")
    if isinstance(stop, list) and any(isinstance(s, str) and s for s in stop):
        out["stop"] = [s for s in stop if isinstance(s, str) and s]
    user = _user_id(body.get("metadata"))
    if user is not None:
        out["user"] = user
    out.update(tool_fields(body))
    effort = reasoning_effort(body.get("thinking"))
    if reasoning and effort is not None:
        out["reasoning_effort"] = effort
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _user_id(metadata: Any) -> str | None:
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    return user if isinstance(user, str) and user else None


def reasoning_effort(thinking: Any) -> str | None:
    """`reasoning_effort` for an enabled `thinking` budget; None when thinking is off,
    adaptive (the upstream's default is the closest match) or malformed."""
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool):
        return None
    if budget < _MEDIUM_BUDGET:
        return "low"
    if budget < _HIGH_BUDGET:
        return "medium"
    return "high"


# --- system --------------------------------------------------------------------------------


def system_messages(system: Any) -> list[dict[str, Any]]:
    """`system` as at most one leading chat message; non-text blocks are ignored."""
    if isinstance(system, str):
        text = system
    elif isinstance(system, list):
        text = "\n\n".join(_block_texts(system))
    elif system is None:
        return []
    else:
        raise InvalidRequest("system: must be a string or an array of text blocks", param="system")
    return [{"role": "system", "content": text}] if text else []


def _block_texts(blocks: list[Any]) -> list[str]:
    """The non-empty `text` of each text block."""
    texts = []
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "text":
            text = block.get("text")
            if isinstance(text, str) and text:
                texts.append(text)
    return texts


# --- messages ------------------------------------------------------------------------------


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """The conversation turns as chat messages (one Anthropic turn can become several)."""
    if not isinstance(messages, list):
        raise InvalidRequest("messages: must be an array", param="messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where}: must be an object", param=where)
        role = message.get("role")
        blocks = _content_blocks(message.get("content"), where)
        if role == "user":
            out.extend(user_messages(blocks, where))
        elif role == "assistant":
            out.extend(assistant_messages(blocks, where))
        else:
            raise InvalidRequest(
                f"{where}.role: must be 'user' or 'assistant', not {role!r}", param=f"{where}.role"
            )
    return out


def _content_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """`content` as a list of blocks: a string is one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [block for block in content if isinstance(block, dict)]
    raise InvalidRequest(
        f"{where}.content: must be a string or an array of content blocks",
        param=f"{where}.content",
    )


def user_messages(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as `tool` messages first, in order, then one user
    message with the rest (plus any images or files the tool results carried)."""
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    carried: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        if block.get("type") == "tool_result":
            message, attachments = tool_message(block, f"{where}.content.{j}")
            tool_messages.append(message)
            carried.extend(attachments)
        else:
            parts.extend(user_parts(block))
    parts = carried + parts
    out = tool_messages
    if parts:
        out.append({"role": "user", "content": _compact(parts)})
    return out


def _compact(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A lone text part as a plain string, which every chat upstream accepts."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def user_parts(block: dict[str, Any]) -> list[dict[str, Any]]:
    """The chat content parts for one user block; blocks with no chat counterpart (search
    results aside, which become text) give none."""
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        return [_text_part(text)] if isinstance(text, str) and text else []
    if kind == "image":
        image = image_part(block.get("source"))
        return [image] if image is not None else []
    if kind == "document":
        return document_parts(block)
    if kind == "search_result":
        text = _search_result_text(block)
        return [_text_part(text)] if text else []
    return []  # thinking in a user turn, tool_use, server tool blocks, newer block types


def image_part(source: Any) -> dict[str, Any] | None:
    """An `image_url` part for a base64 or URL image; None for a `file` source (an uploaded
    file id only Anthropic can resolve)."""
    if not isinstance(source, dict):
        return None
    if source.get("type") == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if isinstance(media_type, str) and isinstance(data, str):
            return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    return None


def document_parts(block: dict[str, Any]) -> list[dict[str, Any]]:
    """A document: plain text and content sources → text, an inline PDF → a chat `file` part.
    PDF URLs and uploaded file ids have no chat counterpart and are dropped."""
    source = block.get("source")
    if not isinstance(source, dict):
        return []
    kind = source.get("type")
    if kind == "text":
        data = source.get("data")
        return [_text_part(data)] if isinstance(data, str) and data else []
    if kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            return [_text_part(content)] if content else []
        if isinstance(content, list):
            return [p for b in content if isinstance(b, dict) for p in user_parts(b)]
        return []
    if kind == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") or "application/pdf"
        title = block.get("title")
        filename = title if isinstance(title, str) and title else "document.pdf"
        file_data = f"data:{media_type};base64,{source['data']}"
        return [{"type": "file", "file": {"filename": filename, "file_data": file_data}}]
    return []


def _search_result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    texts = _block_texts(content) if isinstance(content, list) else []
    if not texts:
        return ""
    header = [str(block[k]) for k in ("title", "source") if isinstance(block.get(k), str)]
    return "\n".join([*header, *texts])


def tool_message(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The `tool` message for a `tool_result`, and the non-text parts it carried. A failed
    tool's text is prefixed with `Error: `: chat has no `is_error`, and the model must know."""
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise InvalidRequest(f"{where}.tool_use_id: is required", param=f"{where}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    attachments: list[dict[str, Any]] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for inner in content:
            if not isinstance(inner, dict):
                continue
            for part in user_parts(inner):
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    attachments.append(part)
    text = "\n".join(t for t in texts if t)
    if block.get("is_error") is True:
        text = ERROR_PREFIX + text if text else ERROR_PREFIX.strip()
    return {"role": "tool", "tool_call_id": tool_use_id, "content": text}, attachments


def assistant_messages(blocks: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """An assistant turn as one chat message: its text, then its tool calls; none at all
    when only thinking (or nothing chat can carry) is left."""
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if isinstance(text, str) and text:
                texts.append(text)
        elif kind == "tool_use":
            tool_calls.append(tool_call(block, f"{where}.content.{j}"))
        # thinking, redacted_thinking, server tool uses and their results: dropped.
    if not texts and not tool_calls:
        return []
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "\n\n".join(texts) if texts else None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    return [message]


def tool_call(block: dict[str, Any], where: str) -> dict[str, Any]:
    """A chat tool call for a `tool_use` block: the same id, the input as compact JSON."""
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise InvalidRequest(f"{where}: a tool_use block needs an id and a name", param=where)
    arguments = block.get("input")
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": _compact_json(arguments)},
    }


def _compact_json(value: Any) -> str:
    return orjson.dumps(value if value is not None else {}).decode()


# --- tools ---------------------------------------------------------------------------------


def tool_fields(body: dict[str, Any]) -> dict[str, Any]:
    """`tools`, `tool_choice` and `parallel_tool_calls` for the chat body; nothing at all
    when no custom tool is left."""
    tools = chat_tools(body.get("tools"))
    if not tools:
        return {}
    out: dict[str, Any] = {"tools": tools}
    names = {tool["function"]["name"] for tool in tools}
    choice = body.get("tool_choice")
    chat_choice = chat_tool_choice(choice, names)
    if chat_choice is not None:
        out["tool_choice"] = chat_choice
    if isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def chat_tools(tools: Any) -> list[dict[str, Any]]:
    """Custom tools as chat function tools. Server tools (bash, web_search, text_editor...,
    any `type` but `custom`) run on Anthropic's side only and are dropped, as are tools
    without a name or an `input_schema`."""
    if not isinstance(tools, list):
        return []
    out = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type", "custom") not in ("custom", None):
            continue
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name or not isinstance(schema, dict):
            continue
        function: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if isinstance(description, str) and description:
            function["description"] = description
        function["parameters"] = schema
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any, names: set[str]) -> str | dict[str, Any] | None:
    """Chat's `tool_choice`; None (the upstream's default, auto) when absent, unknown, or
    naming a tool that was dropped (forcing it would be refused)."""
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if kind == "auto":
        return "auto"
    if kind == "any":
        return "required"
    if kind == "none":
        return "none"
    if kind == "tool" and choice.get("name") in names:
        return {"type": "function", "function": {"name": choice["name"]}}
    return None


# --- estimate ------------------------------------------------------------------------------


def estimate_text(body: dict[str, Any]) -> str:
    """All the text of a Messages request, for a token estimate (admission and
    `count_tokens` without an Anthropic upstream): system, every text the turns carry, tool
    calls' inputs and tool definitions as JSON. Images and thinking are not text and are left
    out, as the translation leaves thinking out."""
    pieces: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        pieces.append(system)
    elif isinstance(system, list):
        pieces.extend(_block_texts(system))
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, dict):
            pieces.extend(_content_texts(message.get("content")))
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        pieces.append(orjson.dumps(tools).decode())
    return "\n".join(piece for piece in pieces if piece)


def _content_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    texts: list[str] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "tool_use":
            texts.append(str(block.get("name") or ""))
            texts.append(_compact_json(block.get("input")))
        elif kind == "tool_result":
            texts.extend(_content_texts(block.get("content")))
        else:
            texts.extend(p["text"] for p in user_parts(block) if p["type"] == "text")
    return texts
