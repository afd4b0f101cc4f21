"""A fake OpenAI-compatible upstream: a real aiohttp server on 127.0.0.1.

Tests script what it does per request by queueing `Behaviour`s (each request takes the next
one, else the default): latency before the headers, a pause before the first event and between
events, an error status, a reset mid-stream, garbage. A request may also pick its own
behaviour: `fault:<name>` anywhere in its body (a prompt, an input) selects `FAULTS[name]`, so
concurrent clients of one fake can each meet a different fault (bench/soak.py does). It records
every request it got and when it wrote each event or saw its client (the gateway) go away, so
tests can assert on timing and on what reached the upstream.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.loopback import LoopbackServer
from tests.fakes.midstream import CUT_AFTER_WORDS, STORY, continuation_of, paced_or_reset, words
from tests.fakes.openai_responses import ResponsesAPI


@dataclass
class Behaviour:
    status: int = 200
    error: dict[str, Any] | None = None  # the error object for an error status
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the response headers
    first_event_delay_s: float = 0.0  # streams: after the headers, before the first event
    pace_s: float = 0.0  # streams: between events
    words: list[str] = field(default_factory=lambda: ["Hello", " from", " the", " upstream"])
    reset_after_events: int | None = None  # streams: drop the connection after N events
    reset_before_headers: bool = False
    garbage: bool = False  # 200 with a body that is not what was asked for
    error_event_after: int | None = None  # streams: an in-band error event after N events
    crlf: bool = False  # streams: \r\n line endings
    leading_comment: bool = False  # streams: a `: processing` comment before the first event
    no_done: bool = False  # streams: end without [DONE]
    stall_after_events: int | None = None  # streams: go silent (a minute) after N events
    close_after_events: int | None = None  # streams: end cleanly after N events, unfinished
    prompt_tokens: int = 11
    completion_tokens: int | None = None  # default: the number of words
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # of the completion tokens
    raw_body: bytes | None = None  # streams: this body, written as is in one write
    # tool calls to answer with (each {"id", "name", "arguments"}), after any words
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    chunk_id: str = "chatcmpl-fake"  # streams: every chunk's id and created
    created: int = 1700000000


SECRET_ECHOED = "sk-upstream-echoed-0123456789abcdef"  # what `echo_secret` leaks, to be redacted

# Every way this fake can misbehave, by the name a request picks it with (`fault:<name>`).
FAULTS: dict[str, Behaviour] = {
    "status_500": Behaviour(status=500),
    "status_503": Behaviour(status=503, headers={"retry-after": "1"}),
    "status_429": Behaviour(
        status=429,
        error={"message": "Rate limit reached", "type": "requests", "param": None, "code": None},
        headers={"retry-after": "1"},
    ),
    "reset_before_headers": Behaviour(reset_before_headers=True),
    "reset_mid_stream": Behaviour(reset_after_events=2),
    "slow_headers": Behaviour(delay_s=0.3),
    "stall_first_event": Behaviour(first_event_delay_s=30),
    "stall_mid_stream": Behaviour(words=["a", "b", "c"] * 5, pace_s=30),
    "garbage": Behaviour(garbage=True),
    "error_event": Behaviour(error_event_after=2),
    "no_done": Behaviour(no_done=True),
    "malformed_event": Behaviour(
        raw_body=b'data: {"choices": [{"delta": {"content": "x"}}]}\n\ndata: {"usage": {broken\n\n'
    ),
    "crlf": Behaviour(crlf=True, leading_comment=True),
    "echo_secret": Behaviour(
        status=401,
        error={
            "message": f"Incorrect API key provided: Bearer {SECRET_ECHOED}",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        },
    ),
}
# Mid-stream failures of a known answer (tests/fakes/midstream.py): after the role chunk and
# CUT_AFTER_WORDS words; a continuation request is answered with the rest of the story.
_CUT = CUT_AFTER_WORDS + 1
_STORY = words(STORY)
for _suffix in ("", "_overlap"):
    FAULTS["mid_reset" + _suffix] = Behaviour(words=_STORY, reset_after_events=_CUT, pace_s=0.01)
    FAULTS["mid_stall" + _suffix] = Behaviour(words=_STORY, stall_after_events=_CUT, pace_s=0.01)
    FAULTS["mid_error" + _suffix] = Behaviour(words=_STORY, error_event_after=_CUT, pace_s=0.01)
    FAULTS["mid_no_finish" + _suffix] = Behaviour(
        words=_STORY, close_after_events=_CUT, pace_s=0.01
    )
# A tool call whose arguments break off: cannot be continued.
FAULTS["mid_reset_tool"] = Behaviour(
    words=[],
    tool_calls=[{"id": "call_1", "name": "lookup", "arguments": '{"city": "Paris"}'}],
    reset_after_events=3,
)
_FAULT = re.compile(rb"fault:([a-z_0-9]+)")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float = field(default_factory=time.perf_counter)  # when its body had been read


class FakeOpenAI(LoopbackServer):
    """Start with `await fake.start()`; `fake.url` is the base URL including `/v1`."""

    def __init__(self) -> None:
        super().__init__()
        self.default = Behaviour()
        self.queue: deque[Behaviour] = deque()
        self.requests: list[Received] = []
        self.event_times: list[float] = []  # perf_counter after each event was written
        self.disconnects: list[float] = []  # perf_counter when the gateway went away
        self._disconnected = asyncio.Event()
        self.in_flight = 0
        self.responses_api = ResponsesAPI()  # what /v1/responses keeps, as OpenAI does

    def next(self, *behaviours: Behaviour) -> None:
        self.queue.extend(behaviours)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/responses", self._responses)
        await self.serve(app, handler_cancellation=True)

    async def wait_disconnect(self, within: float) -> float | None:
        """The time the gateway dropped a connection, waiting up to `within` seconds."""
        try:
            await asyncio.wait_for(self._disconnected.wait(), within)
        except TimeoutError:
            return None
        return self.disconnects[0]

    def _saw_disconnect(self) -> None:
        self.disconnects.append(time.perf_counter())
        self._disconnected.set()

    # --- handlers ---------------------------------------------------------------------------

    async def _begin(self, request: web.Request) -> tuple[Behaviour, dict[str, Any]]:
        raw = await request.read()
        body = orjson.loads(raw)
        self.requests.append(Received(request.path, dict(request.headers), body))
        picked = _FAULT.search(raw)
        rest = continuation_of(body) if request.path.endswith("/chat/completions") else None
        if rest is not None:
            # `slow_continuation`: slow enough for a client to leave in the middle of it.
            pace = 0.2 if b"slow_continuation" in raw else 0.01
            # An id and a time of its own, as another model's answer has: the gateway must
            # give the client the first stream's instead.
            behaviour = Behaviour(
                words=words(rest), pace_s=pace, chunk_id="chatcmpl-continued", created=1700000999
            )
        elif picked is not None and picked.group(1).decode() in FAULTS:
            behaviour = FAULTS[picked.group(1).decode()]
        else:
            behaviour = self.queue.popleft() if self.queue else self.default
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.reset_before_headers:
            assert request.transport is not None
            request.transport.abort()
        return behaviour, body

    def _error_response(self, behaviour: Behaviour) -> web.Response:
        error = behaviour.error or {
            "message": f"fake upstream error {behaviour.status}",
            "type": "server_error" if behaviour.status >= 500 else "invalid_request_error",
            "param": None,
            "code": None,
        }
        return web.json_response(
            {"error": error}, status=behaviour.status, headers=behaviour.headers
        )

    def _usage(self, behaviour: Behaviour) -> dict[str, Any]:
        completion = behaviour.completion_tokens
        if completion is None:
            completion = len(behaviour.words)
        return {
            "prompt_tokens": behaviour.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": behaviour.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": behaviour.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": behaviour.reasoning_tokens},
        }

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        try:
            behaviour, body = await self._begin(request)
            if behaviour.status >= 400:
                return self._error_response(behaviour)
            if behaviour.garbage:
                return web.Response(text="<html>not json</html>", content_type="text/html")
            if body.get("stream"):
                return await self._stream(request, behaviour, body)
            answer = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": 1700000000,
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": "".join(behaviour.words)
                            or (None if behaviour.tool_calls else ""),
                            "refusal": None,
                            "annotations": [],
                            **_tool_calls_field(behaviour),
                        },
                        "logprobs": None,
                        "finish_reason": "tool_calls" if behaviour.tool_calls else "stop",
                    }
                ],
                "usage": self._usage(behaviour),
                "system_fingerprint": None,
            }
            headers = {
                "Server": "fake-upstream/1.0",
                "Set-Cookie": "session=secret",
                "openai-organization": "org-secret",
                **behaviour.headers,
            }
            return web.json_response(answer, headers=headers)
        except asyncio.CancelledError:
            self._saw_disconnect()
            raise
        finally:
            self.in_flight -= 1

    async def _stream(
        self, request: web.Request, behaviour: Behaviour, body: dict[str, Any]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Server": "fake-upstream/1.0",
                "Set-Cookie": "session=secret",
                **behaviour.headers,
            }
        )
        await response.prepare(request)
        if behaviour.raw_body is not None:
            await response.write(behaviour.raw_body)
            await response.write_eof()
            return response
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        base = {
            "id": behaviour.chunk_id,
            "object": "chat.completion.chunk",
            "created": behaviour.created,
            "model": body.get("model"),
        }
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None, i: int = 0) -> dict[str, Any]:
            choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice], **extra}

        events: list[bytes] = [orjson.dumps(chunk({"role": "assistant", "content": ""}))]
        # `n` choices: each word for each choice in turn, as OpenAI interleaves them.
        asked = body.get("n")
        n = asked if isinstance(asked, int) and asked > 0 else 1
        events += [
            orjson.dumps(chunk({"content": w}, i=i)) for w in behaviour.words for i in range(n)
        ]
        for i, call in enumerate(behaviour.tool_calls):
            # As OpenAI streams them: id and name first, then the arguments in pieces.
            head = {"index": i, "id": call["id"], "type": "function"}
            head["function"] = {"name": call["name"], "arguments": ""}
            events.append(orjson.dumps(chunk({"tool_calls": [head]})))
            half = len(call["arguments"]) // 2
            for piece in (call["arguments"][:half], call["arguments"][half:]):
                fragment = {"index": i, "function": {"arguments": piece}}
                events.append(orjson.dumps(chunk({"tool_calls": [fragment]})))
        events.append(orjson.dumps(chunk({}, "tool_calls" if behaviour.tool_calls else "stop")))
        if include_usage:
            events.append(orjson.dumps({**base, "choices": [], "usage": self._usage(behaviour)}))
        if not behaviour.no_done:
            events.append(b"[DONE]")
        newline = b"\r\n" if behaviour.crlf else b"\n"

        try:
            if behaviour.leading_comment:
                await response.write(b": processing" + newline + newline)
            if behaviour.first_event_delay_s:
                await asyncio.sleep(behaviour.first_event_delay_s)
            for i, payload in enumerate(events):
                if await paced_or_reset(i, behaviour, request):
                    return response
                if behaviour.close_after_events is not None and i == behaviour.close_after_events:
                    break  # a clean end, without finish_reason or [DONE]
                if behaviour.error_event_after is not None and i == behaviour.error_event_after:
                    error = {
                        "error": {
                            "message": "upstream broke mid-stream",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                    await response.write(b"data: " + orjson.dumps(error) + newline + newline)
                    return response
                await response.write(b"data: " + payload + newline + newline)
                self.event_times.append(time.perf_counter())
        except (ConnectionResetError, asyncio.CancelledError):
            self._saw_disconnect()
            raise
        await response.write_eof()
        return response

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        behaviour, body = await self._begin(request)
        return await self.responses_api.handle(request, behaviour, body, self._error_response)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        """The legacy API, as OpenAI and vLLM serve it: one choice per prompt, each the
        behaviour's words; a stream's chunks are `text_completion`s, usage-only last."""
        behaviour, body = await self._begin(request)
        if behaviour.status >= 400:
            return self._error_response(behaviour)
        prompt = body.get("prompt")
        count = (
            len(prompt) if isinstance(prompt, list) and isinstance(prompt[0], (str, list)) else 1
        )
        base = {"id": "cmpl-fake", "object": "text_completion", "created": 1700000000}
        base["model"] = body.get("model")
        if not body.get("stream"):
            choices = [
                {"text": "".join(behaviour.words), "index": i, "logprobs": None}
                | {"finish_reason": "length"}
                for i in range(count)
            ]
            usage = self._usage(behaviour)
            return web.json_response({**base, "choices": choices, "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = [
            {
                **base,
                "choices": [{"text": word, "index": i, "logprobs": None, "finish_reason": None}],
            }
            for i in range(count)
            for word in behaviour.words
        ]
        events += [
            {
                **base,
                "choices": [{"text": "", "index": i, "logprobs": None, "finish_reason": "stop"}],
            }
            for i in range(count)
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": self._usage(behaviour)})
        for i, event in enumerate(events):
            if await paced_or_reset(i, behaviour, request):
                return response
            if i == behaviour.error_event_after:
                error = {"message": "broke mid-stream", "type": "server_error"}
                event = {"error": {**error, "param": None, "code": None}}
                await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
                return response
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        behaviour, body = await self._begin(request)
        if behaviour.status >= 400:
            return self._error_response(behaviour)
        inputs = body["input"]
        if isinstance(inputs, str):
            inputs = [inputs]
        vectors = [[0.25, -0.5, float(i)] for i in range(len(inputs))]
        if body.get("encoding_format") == "base64" and not behaviour.garbage:
            import base64
            import struct

            data = [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": base64.b64encode(struct.pack("<3f", *v)).decode(),
                }
                for i, v in enumerate(vectors)
            ]
        else:  # `garbage` here: floats although base64 was asked, as some servers do
            data = [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": 5, "total_tokens": 5},
            }
        )


def _tool_calls_field(behaviour: Behaviour) -> dict[str, Any]:
    if not behaviour.tool_calls:
        return {}
    calls = [
        {
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]},
        }
        for call in behaviour.tool_calls
    ]
    return {"tool_calls": calls}
