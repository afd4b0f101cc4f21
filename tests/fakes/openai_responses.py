"""The Responses API of the fake OpenAI upstream (`POST /v1/responses`), as OpenAI serves it:
a Response object, or its typed events with `sequence_number`, each named by an `event:` line.

The answer is the behaviour's words as one message, then its tool calls as `function_call`
items. Like OpenAI it keeps the responses it made unless `store: false`, and refuses a
`previous_response_id`, or an `item_reference` to an item, it does not have, so tests see
which upstream keeps what.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from tests.fakes.midstream import paced_or_reset

if TYPE_CHECKING:
    from tests.fakes.openai_upstream import Behaviour

CREATED_AT = 1700000000


class ResponsesAPI:
    def __init__(self) -> None:
        self.kept: dict[str, dict[str, Any]] = {}
        self._count = 0

    def _usage(self, behaviour: Behaviour) -> dict[str, Any]:
        output = behaviour.completion_tokens
        if output is None:
            output = len(behaviour.words)
        return {
            "input_tokens": behaviour.prompt_tokens,
            "input_tokens_details": {
                "cached_tokens": behaviour.cached_tokens,
                "cache_write_tokens": 0,
            },
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": behaviour.reasoning_tokens},
            "total_tokens": behaviour.prompt_tokens + output,
        }

    def _envelope(self, body: dict[str, Any], response_id: str, status: str) -> dict[str, Any]:
        return {
            "id": response_id,
            "object": "response",
            "created_at": CREATED_AT,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body.get("model"),
            "output": [],
            "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": body.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": body.get("tools") or [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": None,
            "user": None,
            "metadata": {},
        }

    def _items(self, behaviour: Behaviour, n: int) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if behaviour.words:
            text = "".join(behaviour.words)
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            items.append(
                {
                    "id": f"msg_fake{n}",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [part],
                }
            )
        for i, call in enumerate(behaviour.tool_calls):
            items.append(
                {
                    "id": f"fc_fake{n}_{i}",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": call["id"],
                    "name": call["name"],
                    "arguments": call["arguments"],
                }
            )
        return items

    async def handle(
        self,
        request: web.Request,
        behaviour: Behaviour,
        body: dict[str, Any],
        error_response: Callable[[Behaviour], web.Response],
    ) -> web.StreamResponse:
        if behaviour.status >= 400:
            return error_response(behaviour)
        previous = body.get("previous_response_id")
        if previous is not None and previous not in self.kept:
            error: dict[str, str | None] = {
                "message": f"Previous response with id '{previous}' not found.",
                "type": "invalid_request_error",
                "param": "previous_response_id",
                "code": "previous_response_not_found",
            }
            return web.json_response({"error": error}, status=400)
        sent = body.get("input")
        items: list[Any] = sent if isinstance(sent, list) else []
        known = {item["id"] for kept in self.kept.values() for item in kept["output"]}
        for item in items:
            if item.get("type") == "item_reference" and item.get("id") not in known:
                error = {
                    "message": f"Item with id '{item.get('id')}' not found.",
                    "type": "invalid_request_error",
                    "param": "input",
                    "code": None,
                }
                return web.json_response({"error": error}, status=400)
        self._count += 1
        n = self._count
        response_id = f"resp_fake{n}"
        final = self._envelope(body, response_id, "completed")
        final["output"] = self._items(behaviour, n)
        final["usage"] = self._usage(behaviour)
        if body.get("store") is not False:
            self.kept[response_id] = final
        if not body.get("stream"):
            return web.json_response(final)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i, event in enumerate(self._events(behaviour, body, response_id, final, n)):
            # The mid-stream faults, counted in events as for chat streams.
            if await paced_or_reset(i, behaviour, request):
                return response
            if i == behaviour.close_after_events:
                break
            if i == behaviour.error_event_after:
                error = {"type": "error", "code": "server_error", "message": "broke mid-stream"}
                event = {**error, "param": None, "sequence_number": i}
            name = event["type"]
            await response.write(
                b"event: " + name.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
            )
            if name == "error":
                return response
        await response.write_eof()
        return response

    def _events(
        self,
        behaviour: Behaviour,
        body: dict[str, Any],
        response_id: str,
        final: dict[str, Any],
        n: int,
    ) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []

        def add(kind: str, **fields: Any) -> None:
            events.append({"type": kind, "sequence_number": len(events), **fields})

        start = self._envelope(body, response_id, "in_progress")
        add("response.created", response=start)
        add("response.in_progress", response=start)
        for index, item in enumerate(final["output"]):
            if item["type"] == "message":
                add("response.output_item.added", output_index=index, item={**item, "content": []})
                where = {"item_id": item["id"], "output_index": index, "content_index": 0}
                empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                add("response.content_part.added", **where, part=empty)
                for word in behaviour.words:
                    add("response.output_text.delta", **where, delta=word, logprobs=[])
                text = item["content"][0]["text"]
                add("response.output_text.done", **where, text=text, logprobs=[])
                add("response.content_part.done", **where, part=item["content"][0])
            else:
                head = {**item, "arguments": "", "status": "in_progress"}
                add("response.output_item.added", output_index=index, item=head)
                where = {"item_id": item["id"], "output_index": index}
                add("response.function_call_arguments.delta", **where, delta=item["arguments"])
                add("response.function_call_arguments.done", **where, arguments=item["arguments"])
            add("response.output_item.done", output_index=index, item=item)
        add("response.completed", response=final)
        return events
