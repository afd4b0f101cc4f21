"""Token estimates for admission, before the upstream has counted anything.

The estimate only reserves room under `tpm`; the upstream's own count replaces it when the
request settles. About four characters a token (OpenAI's rule of thumb) plus a few tokens of
overhead per message.
"""

from __future__ import annotations

from typing import Any

PER_MESSAGE_OVERHEAD = 4
DEFAULT_COMPLETION_RESERVE = 1024  # when the request sets no max_tokens


def text_tokens(text: str) -> int:
    return (len(text) + 3) // 4  # ceil(len / 4) in integers


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    total += text_tokens(part["text"])
                elif part.get("type") in ("image_url", "input_image", "image"):
                    total += 765  # OpenAI's cost of a high-detail 512px tile set
        return total
    return 0


def prompt_tokens(body: dict[str, Any]) -> int:
    """Estimated prompt tokens of a chat or embeddings body."""
    messages = body.get("messages")
    if isinstance(messages, list):
        total = 3
        for message in messages:
            if isinstance(message, dict):
                content = message.get("content")
                # `text_tokens` inlined for the usual plain-text message: this runs for every
                # message of every request under a tpm limit.
                if type(content) is str:
                    total += PER_MESSAGE_OVERHEAD + (len(content) + 3) // 4
                else:
                    total += PER_MESSAGE_OVERHEAD + _content_tokens(content)
                calls = message.get("tool_calls")
                if calls:
                    for call in calls if isinstance(calls, list) else ():
                        if isinstance(call, dict):
                            total += text_tokens(str(call.get("function", "")))
        tools = body.get("tools")
        if tools:
            total += text_tokens(str(tools))
        return total
    inputs = body.get("input")
    if isinstance(inputs, str):
        return text_tokens(inputs)
    if isinstance(inputs, list):
        return sum(
            text_tokens(item)
            if isinstance(item, str)
            else len(item)
            if isinstance(item, list)
            else 1
            for item in inputs
        )
    return 0


def completion_reserve(body: dict[str, Any]) -> int:
    """The completion tokens a chat request may use, as it asked."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_COMPLETION_RESERVE


class TokenEstimate:
    """A request's token estimate, worked out only when something needs it: a key or model
    with a tokens-per-minute limit (to reserve room), or a stream cut before the upstream
    counted its usage. Most requests need neither, and estimating walks the whole body."""

    __slots__ = ("_body", "_completion", "_prompt")

    def __init__(self, body: dict[str, Any], *, completion: bool) -> None:
        self._body = body
        self._completion = completion
        self._prompt: int | None = None

    @property
    def prompt(self) -> int:
        """Estimated prompt tokens."""
        if self._prompt is None:
            self._prompt = prompt_tokens(self._body)
        return self._prompt

    @property
    def completion(self) -> int:
        """What a completion may write, as it asked (0 for embeddings)."""
        return completion_reserve(self._body) if self._completion else 0

    @property
    def reserve(self) -> int:
        """What to reserve under `tpm`: the prompt, and for a completion what it may write."""
        prompt = self._prompt
        if prompt is None:
            prompt = self._prompt = prompt_tokens(self._body)
        if not self._completion:
            return prompt
        # `completion_reserve` inlined for the usual body, which sets `max_tokens` or nothing.
        body = self._body
        if "max_completion_tokens" not in body:
            value = body.get("max_tokens")
            if type(value) is int and value > 0:
                return prompt + value
            if value is None:
                return prompt + DEFAULT_COMPLETION_RESERVE
        return prompt + completion_reserve(body)
