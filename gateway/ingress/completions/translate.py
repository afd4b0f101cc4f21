"""Legacy Completions (`prompt` in, `text` out) ↔ Chat Completions. Pure: dicts and bytes.

One chat request serves one prompt: `prompts(body)` lists them and the caller sends
`chat_request(body, prompt)` for each (the legacy API takes a list of prompts; chat has no such
thing), then joins the answers with `merge_completions`, or feeds every stream through one
`CompletionsStreamWriter` with each prompt's `index_offset`. Choice indexes follow OpenAI's
rule: prompt `i`'s `n` choices are `i*n ... i*n+n-1`.

Dropped, because a chat upstream has no way to honour them: `suffix`, `echo`, `logprobs`,
`best_of`. `max_tokens` defaults to 16 when absent, as on the legacy API (an explicit null
means no limit).
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from gateway.sse import DONE, encode_data

# Request fields with the same name and meaning in chat.
_COPIED = (
    "model",
    "temperature",
    "top_p",
    "stop",
    "n",
    "user",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)
DEFAULT_MAX_TOKENS = 16
_FINISH_REASONS = ("stop", "length", "content_filter")


class InvalidPrompt(ValueError):
    """`prompt` is missing or not text (token-id prompts cannot be sent as chat messages): the
    caller answers 400 `invalid_request_error` with `param: "prompt"`."""

    param = "prompt"


def prompts(body: dict[str, Any]) -> list[str]:
    """The prompts a request asks about, in order: one for a string, each for a list."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if prompt is None:
        raise InvalidPrompt("'prompt' is required")
    raise InvalidPrompt("'prompt' must be a string or a non-empty list of strings")


def chat_request(body: dict[str, Any], prompt: str) -> dict[str, Any]:
    """The chat body asking `prompt` as the one user message."""
    out: dict[str, Any] = {key: body[key] for key in _COPIED if body.get(key) is not None}
    out["messages"] = [{"role": "user", "content": prompt}]
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def completion_id(chat_id: Any) -> str:
    """`cmpl-` and the chat id's own suffix, so the two can be matched in logs."""
    if isinstance(chat_id, str) and chat_id.startswith("chatcmpl-") and len(chat_id) > 9:
        return "cmpl-" + chat_id[len("chatcmpl-") :]
    return "cmpl-" + secrets.token_hex(15)


def finish_reason(reason: Any) -> str | None:
    """The legacy API knows stop, length and content_filter; a tool-call stop is a stop."""
    if reason is None:
        return None
    return reason if reason in _FINISH_REASONS else "stop"


def completion_from_chat(
    completion: dict[str, Any], *, model: str, index_offset: int = 0
) -> dict[str, Any]:
    """The `text_completion` for a chat completion; its choices are numbered from
    `index_offset`."""
    choices: list[dict[str, Any]] = []
    for position, choice in enumerate(completion.get("choices") or ()):
        if not isinstance(choice, dict):
            continue
        message = _dict(choice.get("message"))
        content = message.get("content")
        index = choice.get("index")
        choices.append(
            {
                "text": content if isinstance(content, str) else "",
                "index": index_offset + (index if isinstance(index, int) else position),
                "logprobs": None,
                "finish_reason": finish_reason(choice.get("finish_reason")) or "stop",
            }
        )
    out: dict[str, Any] = {
        "id": completion_id(completion.get("id")),
        "object": "text_completion",
        "created": _created(completion.get("created")),
        "model": model,
        "choices": choices,
    }
    if isinstance(completion.get("system_fingerprint"), str):
        out["system_fingerprint"] = completion["system_fingerprint"]
    usage = completion_usage(completion.get("usage"))
    if usage is not None:
        out["usage"] = usage
    return out


def merge_completions(completions: list[dict[str, Any]]) -> dict[str, Any]:
    """One answer for several prompts: the first answer's id, created and model, every choice
    renumbered in order, usage summed."""
    if not completions:
        raise ValueError("merge_completions needs at least one completion")
    first = completions[0]
    merged = {key: value for key, value in first.items() if key not in ("choices", "usage")}
    choices = [choice for completion in completions for choice in completion.get("choices", ())]
    merged["choices"] = [{**choice, "index": i} for i, choice in enumerate(choices)]
    usages = [c["usage"] for c in completions if isinstance(c.get("usage"), dict)]
    if usages:
        merged["usage"] = sum_usage(usages)
    return merged


def completion_usage(usage: Any) -> dict[str, Any] | None:
    """Chat usage as the legacy API reports it (the same field names), counts only."""
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        return None
    out: dict[str, Any] = {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": _int(usage.get("completion_tokens")),
        "total_tokens": _int(usage.get("total_tokens"))
        or usage["prompt_tokens"] + _int(usage.get("completion_tokens")),
    }
    for key in ("prompt_tokens_details", "completion_tokens_details"):
        details = usage.get(key)
        if isinstance(details, dict):
            out[key] = {name: v for name, v in details.items() if isinstance(v, int)}
    return out


def sum_usage(usages: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts added up, details included (a detail missing from one answer counts 0)."""
    total: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    for usage in usages:
        for key, value in usage.items():
            if isinstance(value, int):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, dict):
                details = total.setdefault(key, {})
                for name, count in value.items():
                    if isinstance(count, int):
                        details[name] = details.get(name, 0) + count
    return total


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _created(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else int(time.time())


class CompletionsStreamWriter:
    """Chat chunks → legacy `text_completion` stream events, for one client stream.

    Several upstream streams (one per prompt) may go through the same writer one after the
    other, each fed with its prompt's `index_offset`: the client sees one id and one usage
    chunk adding them all up. A chunk with neither text nor a finish_reason (the role-only
    first chat chunk) produces nothing: the legacy stream has no such event.
    """

    def __init__(
        self, model: str, *, completion_id: str | None = None, created: int | None = None
    ) -> None:
        self._model = model
        self._id = completion_id
        self._created = created
        self._usages: list[dict[str, Any]] = []

    @property
    def id(self) -> str:
        if self._id is None:
            self._id = completion_id(None)
        return self._id

    @property
    def usage(self) -> dict[str, Any] | None:
        """Usage summed over every stream fed so far; None when no stream reported any."""
        return sum_usage(self._usages) if self._usages else None

    def feed(self, chunk: dict[str, Any], index_offset: int = 0) -> list[bytes]:
        """The events for one chat chunk (already JSON-parsed)."""
        if self._id is None:
            self._id = completion_id(chunk.get("id"))
        if self._created is None:
            self._created = _created(chunk.get("created"))
        usage = completion_usage(chunk.get("usage"))
        if usage is not None:
            self._usages.append(usage)
        events: list[bytes] = []
        for position, choice in enumerate(chunk.get("choices") or ()):
            if not isinstance(choice, dict):
                continue
            delta = _dict(choice.get("delta"))
            text = delta.get("content")
            text = text if isinstance(text, str) else ""
            reason = finish_reason(choice.get("finish_reason"))
            if not text and reason is None:
                continue
            index = choice.get("index")
            events.append(
                self._chunk(
                    [
                        {
                            "text": text,
                            "index": index_offset + (index if isinstance(index, int) else position),
                            "logprobs": None,
                            "finish_reason": reason,
                        }
                    ]
                )
            )
        return events

    def finish(self, include_usage: bool) -> list[bytes]:
        """The end of the client stream: the usage chunk (`choices: []`) when the client asked
        for it, then `data: [DONE]`."""
        events: list[bytes] = []
        if include_usage:
            usage = self.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            events.append(self._chunk([], usage=usage))
        events.append(DONE)
        return events

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": self.id,
            "object": "text_completion",
            "created": self._created if self._created is not None else int(time.time()),
            "model": self._model,
            "choices": choices,
            **extra,
        }
        return encode_data(orjson.dumps(payload))
