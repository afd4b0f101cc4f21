"""A fake Anthropic Messages API: a real aiohttp server on 127.0.0.1 speaking the real wire format.

`POST /v1/messages` answers a `message` JSON object, or with `stream: true` the SSE sequence
`message_start`, `ping`, `content_block_start` / `content_block_delta` (`text_delta`,
`input_json_delta`) / `content_block_stop` per block, `message_delta` (stop reason, cumulative
usage) and `message_stop`. Errors are `{"type": "error", "error": {"type", "message"}}` with
Anthropic's statuses, in-band as an `error` event mid-stream.

What it does is scripted per request: a `Reply` registered with `script(name, reply)` answers
requests whose last user turn mentions `fake:<name>` (or that send `x-fake-scenario: <name>`);
otherwise queued replies (`next(...)`) are taken in order, then `default`. It checks what the
real API checks and a translator could get wrong (auth headers, `max_tokens`, alternating
roles, tool results answering the previous turn's tool uses, no empty text blocks), answering
400 `invalid_request_error` as the API would, and records every request it got.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.loopback import LoopbackServer
from tests.fakes.midstream import STORY, continuation_of

_SCENARIO = re.compile(r"fake:([A-Za-z0-9_.-]+)")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(id_: str, name: str, input_: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": id_, "name": name, "input": input_}


@dataclass
class Reply:
    """One scripted answer."""

    content: list[dict[str, Any]] = field(default_factory=lambda: [text("Hello from Claude")])
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    input_tokens: int = 12
    output_tokens: int = 7
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_1h_tokens: int = 0  # of cache_creation_input_tokens, to the 1-hour cache
    status: int = 200
    error_message: str | None = None
    error_type: str | None = None  # default: Anthropic's type for `status`
    headers: dict[str, str] = field(default_factory=dict)
    chunk_chars: int = 4  # streams: text and JSON are sent in fragments this long
    error_event_after: int | None = None  # streams: an `error` event after N events
    error_event_type: str = "overloaded_error"
    cut_after: int | None = None  # streams: end the body after N events, no message_stop
    pace_s: float = 0.0  # streams: between events
    delay_s: float = 0.0  # before the response headers
    reset_after: int | None = None  # streams: drop the connection after N events
    stall_after: int | None = None  # streams: go silent (a minute) after N events


# Mid-stream failures of the known story (tests/fakes/midstream.py), picked with
# `fake:<name>`: message_start, ping, the text block's start, then 5 deltas of 6 characters
# (30 characters of the story), then the fault. A continuation request (a prefill of the
# story) is answered with the rest of it.
_CUT = 8
MIDSTREAM_REPLIES: dict[str, Reply] = {}
for _suffix in ("", "_overlap"):
    MIDSTREAM_REPLIES["mid_reset" + _suffix] = Reply(
        content=[text(STORY)], chunk_chars=6, reset_after=_CUT, pace_s=0.01
    )
    MIDSTREAM_REPLIES["mid_stall" + _suffix] = Reply(
        content=[text(STORY)], chunk_chars=6, stall_after=_CUT, pace_s=0.01
    )
    MIDSTREAM_REPLIES["mid_error" + _suffix] = Reply(
        content=[text(STORY)], chunk_chars=6, error_event_after=_CUT, pace_s=0.01
    )
    MIDSTREAM_REPLIES["mid_no_finish" + _suffix] = Reply(
        content=[text(STORY)], chunk_chars=6, cut_after=_CUT, pace_s=0.01
    )
MIDSTREAM_REPLIES["mid_reset_tool"] = Reply(
    content=[tool_use("toolu_1", "lookup", {"city": "Paris", "country": "France"})],
    stop_reason="tool_use",
    chunk_chars=6,
    reset_after=5,
)


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]


class FakeAnthropic(LoopbackServer):
    """`await fake.start()`; `fake.url` is the base URL (without `/v1`), as Anthropic's."""

    def __init__(self, api_key: str = "sk-ant-test") -> None:
        super().__init__()
        self.api_key = api_key
        self.default = Reply()
        self.queue: deque[Reply] = deque()
        self.scenarios: dict[str, Reply] = dict(MIDSTREAM_REPLIES)
        self.requests: list[Received] = []
        self._message_count = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def last_body(self) -> dict[str, Any]:
        return self.requests[-1].body

    def next(self, *replies: Reply) -> None:
        self.queue.extend(replies)

    def script(self, name: str, reply: Reply) -> None:
        self.scenarios[name] = reply

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        await self.serve(app)

    # --- choosing and checking -------------------------------------------------------------

    def _choose(self, request: web.Request, body: dict[str, Any]) -> Reply:
        rest = continuation_of(body)
        if rest is not None:
            return Reply(content=[text(rest)], chunk_chars=6, pace_s=0.01)
        name = request.headers.get("x-fake-scenario")
        if name is None:
            messages = body.get("messages") or []
            last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
            match = _SCENARIO.search(orjson.dumps(last_user).decode()) if last_user else None
            name = match.group(1) if match else None
        if name is not None and name in self.scenarios:
            return self.scenarios[name]
        return self.queue.popleft() if self.queue else self.default

    def _problem(self, request: web.Request, body: Any) -> tuple[int, str] | None:
        # The API takes the key as `x-api-key` or, as newer SDKs send it, a bearer token.
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.api_key not in (request.headers.get("x-api-key"), bearer):
            return 401, "invalid x-api-key"
        if not request.headers.get("anthropic-version"):
            return 400, "anthropic-version: header is required"
        if not isinstance(body, dict):
            return 400, "body must be a JSON object"
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
            return 400, "max_tokens: Field required"
        if not isinstance(body.get("model"), str):
            return 400, "model: Field required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return 400, "messages: at least one message is required"
        unknown = set(body) - {
            "model",
            "messages",
            "max_tokens",
            "system",
            "stop_sequences",
            "temperature",
            "top_p",
            "top_k",
            "metadata",
            "tools",
            "tool_choice",
            "stream",
        }
        if unknown:
            return 400, f"{sorted(unknown)[0]}: Extra inputs are not permitted"
        previous_tool_ids: set[str] = set()
        for i, message in enumerate(messages):
            role = message.get("role")
            if role not in ("user", "assistant"):
                return 400, f"messages.{i}.role: Input should be 'user' or 'assistant'"
            if i == 0 and role != "user":
                return 400, 'messages: first message must use the "user" role'
            if i and messages[i - 1].get("role") == role:
                return 400, 'messages: roles must alternate between "user" and "assistant"'
            content = message.get("content")
            blocks = [text(content)] if isinstance(content, str) else content
            if not isinstance(blocks, list) or not blocks:
                return 400, f"messages.{i}: all messages must have non-empty content"
            tool_ids: set[str] = set()
            for block in blocks:
                if block.get("type") == "text" and not block.get("text"):
                    return 400, f"messages.{i}: text content blocks must be non-empty"
                if block.get("type") == "tool_use":
                    tool_ids.add(block.get("id"))
                if block.get("type") == "tool_result" and (
                    block.get("tool_use_id") not in previous_tool_ids
                ):
                    return 400, (
                        f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks"
                    )
            previous_tool_ids = tool_ids
        return None

    # --- answers -----------------------------------------------------------------------------

    def _error(
        self,
        status: int,
        message: str,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        payload = {
            "type": "error",
            "error": {"type": kind or ERROR_TYPES.get(status, "api_error"), "message": message},
        }
        return web.json_response(
            payload, status=status, headers={"request-id": "req_fake", **(headers or {})}
        )

    def _usage(self, reply: Reply, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": reply.input_tokens,
            "cache_creation_input_tokens": reply.cache_creation_input_tokens,
            "cache_read_input_tokens": reply.cache_read_input_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": reply.cache_creation_input_tokens
                - reply.cache_creation_1h_tokens,
                "ephemeral_1h_input_tokens": reply.cache_creation_1h_tokens,
            },
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _message(self, reply: Reply, body: dict[str, Any], *, streaming: bool) -> dict[str, Any]:
        self._message_count += 1
        return {
            "id": f"msg_fake{self._message_count:04d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [] if streaming else reply.content,
            "stop_reason": None if streaming else reply.stop_reason,
            "stop_sequence": None if streaming else reply.stop_sequence,
            "usage": self._usage(reply, 1 if streaming else reply.output_tokens),
        }

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._error(400, "The request body is not valid JSON.")
        self.requests.append(Received(dict(request.headers), body))
        problem = self._problem(request, body)
        if problem is not None:
            return self._error(*problem)
        reply = self._choose(request, body)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status >= 400:
            return self._error(
                reply.status,
                reply.error_message or f"fake error {reply.status}",
                reply.error_type,
                reply.headers,
            )
        if body.get("stream"):
            return await self._stream(request, reply, body)
        return web.json_response(
            self._message(reply, body, streaming=False),
            headers={"request-id": "req_fake", **reply.headers},
        )

    def _events(self, reply: Reply, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "message_start",
                {"type": "message_start", "message": self._message(reply, body, streaming=True)},
            ),
            ("ping", {"type": "ping"}),
        ]
        size = max(1, reply.chunk_chars)
        for index, block in enumerate(reply.content):
            start: dict[str, Any]
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
                whole, delta_type, key = block["text"], "text_delta", "text"
            else:
                start = {**block, "input": {}}
                whole = orjson.dumps(block["input"]).decode() if block["input"] else ""
                delta_type, key = "input_json_delta", "partial_json"
            events.append(
                (
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": start},
                )
            )
            pieces = [whole[i : i + size] for i in range(0, len(whole), size)] or [""]
            for piece in pieces:
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": delta_type, key: piece},
                        },
                    )
                )
            events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": reply.stop_reason,
                        "stop_sequence": reply.stop_sequence,
                    },
                    "usage": {"output_tokens": reply.output_tokens},
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    async def _stream(
        self, request: web.Request, reply: Reply, body: dict[str, Any]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": "req_fake",
                **reply.headers,
            }
        )
        await response.prepare(request)
        for i, (name, payload) in enumerate(self._events(reply, body)):
            if reply.cut_after is not None and i == reply.cut_after:
                break
            if reply.error_event_after is not None and i == reply.error_event_after:
                error = {
                    "type": "error",
                    "error": {
                        "type": reply.error_event_type,
                        "message": reply.error_message or "Overloaded",
                    },
                }
                await response.write(b"event: error\ndata: " + orjson.dumps(error) + b"\n\n")
                break
            if i and reply.pace_s:
                await asyncio.sleep(reply.pace_s)
            if reply.reset_after is not None and i == reply.reset_after:
                assert request.transport is not None
                request.transport.abort()
                return response
            if reply.stall_after is not None and i == reply.stall_after:
                # Silent until the gateway's idle timeout closes the connection (this server
                # does not cancel handlers, so the wait watches the connection itself).
                for _ in range(600):
                    if request.transport is None or request.transport.is_closing():
                        return response
                    await asyncio.sleep(0.1)
            await response.write(
                b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
            )
        await response.write_eof()
        return response
