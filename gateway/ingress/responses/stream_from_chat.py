"""Chat Completions stream chunks → the Responses API's typed SSE events. Pure: no I/O.

`ResponsesStreamWriter` takes each chat chunk (already JSON-parsed) the moment it arrives and
returns the events it completes, as bytes ready to send; nothing is held back. The event
sequence is OpenAI's own:

    response.created, response.in_progress                      (start)
    response.output_item.added          message, content []
    response.content_part.added         output_text, text ""
    response.output_text.delta ...
    response.output_text.done, response.content_part.done, response.output_item.done
    response.output_item.added          function_call, arguments ""
    response.function_call_arguments.delta ...
    response.function_call_arguments.done, response.output_item.done
    response.completed | response.incomplete                    (finish)
    response.failed                                             (fail, instead of finish)

Every event carries `sequence_number`, 0 upwards without gaps. An item is closed when the next
one starts or when the chunk with `finish_reason` comes, so clients waiting for
`output_item.done` do not wait for the usage chunk. Only the first choice is read: Responses
has no `n`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.ingress.responses.from_chat import (
    ERROR_CODES,
    finish_status,
    function_call_item,
    message_item,
    new_id,
    output_text_part,
    response_object,
    responses_usage,
)
from gateway.sse import encode_event


@dataclass(slots=True)
class _Part:
    kind: str  # "output_text" or "refusal"
    text: str = ""

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": self.text}
        return output_text_part(self.text)


@dataclass(slots=True)
class _Item:
    """The output item being streamed."""

    kind: str  # "message" or "function_call"
    id: str
    output_index: int
    parts: list[_Part] = field(default_factory=list)
    # function_call only:
    tool_index: Any = None
    call_id: str = ""
    name: str = ""
    arguments: str = ""

    def as_dict(self, status: str) -> dict[str, Any]:
        if self.kind == "message":
            return message_item(self.id, [part.as_dict() for part in self.parts], status=status)
        return function_call_item(
            self.id, call_id=self.call_id, name=self.name, arguments=self.arguments, status=status
        )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _continues(item: _Item, index: Any, call_id: Any) -> bool:
    """Whether a tool-call fragment belongs to the open item: the same chat tool-call index
    (or, from upstreams that leave `index` out, no new id)."""
    if item.kind != "function_call":
        return False
    if index is not None:
        return bool(item.tool_index == index)
    return call_id is None or call_id == item.call_id


class ResponsesStreamWriter:
    """Translates one chat stream into one Responses stream."""

    def __init__(
        self,
        request: dict[str, Any],
        model: str,
        response_id: str | None = None,
        created_at: int | None = None,
    ) -> None:
        self._request = request
        self._model = model
        self._id = response_id or new_id("resp")
        self._created_at = int(time.time()) if created_at is None else created_at
        self._sequence = 0
        self._items: list[dict[str, Any]] = []  # closed items, in output order
        self._open: _Item | None = None
        self._finish_reason: str | None = None
        self._chat_usage: dict[str, Any] | None = None
        self._final: dict[str, Any] | None = None

    # --- what the caller reads ------------------------------------------------------------

    @property
    def response(self) -> dict[str, Any]:
        """The final Response after `finish` or `fail` (what the caller stores); before that,
        the response as it stands, status `in_progress`."""
        if self._final is not None:
            return self._final
        return self._envelope("in_progress", self._snapshot_output("in_progress"), usage=None)

    @property
    def usage(self) -> tuple[int, int, int, int]:
        """(input, output, cached, reasoning) tokens from the usage chunk; zeros before it."""
        usage = responses_usage(self._chat_usage)
        return (
            usage["input_tokens"],
            usage["output_tokens"],
            usage["input_tokens_details"]["cached_tokens"],
            usage["output_tokens_details"]["reasoning_tokens"],
        )

    @property
    def finished(self) -> bool:
        """True once `finish` or `fail` has sent the terminal event."""
        return self._final is not None

    def resume(
        self,
        *,
        response_id: str,
        created_at: int,
        sequence: int,
        items: list[dict[str, Any]],
        open_message: tuple[str, int, list[str]] | None,
    ) -> None:
        """Write on from a Responses stream that is not this writer's (a native one continued
        on another model, `ingress.responses.continuing`): its response's id and creation
        time, the next `sequence_number`, the items it closed, and the message item still
        open (its id, output index and the text of each output_text part so far), whose last
        part the continuation's text goes on in."""
        self._id = response_id
        self._created_at = created_at
        self._sequence = sequence
        self._items = list(items)
        if open_message is not None:
            item_id, output_index, texts = open_message
            parts = [_Part("output_text", text) for text in texts]
            self._open = _Item("message", item_id, output_index, parts)

    # --- the stream -----------------------------------------------------------------------

    def start(self) -> list[bytes]:
        """`response.created` and `response.in_progress`: the first two events."""
        snapshot = self._envelope("in_progress", [], usage=None)
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """The events one chat chunk completes."""
        if self._final is not None:
            return []
        if isinstance(chunk.get("usage"), dict):
            self._chat_usage = chunk["usage"]
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            return []
        events: list[bytes] = []
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for kind, key in (("output_text", "content"), ("refusal", "refusal")):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    events += self._text(kind, text)
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    events += self._tool_call(call)
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self._finish_reason = reason
            events += self._close()
        return events

    def finish(self) -> list[bytes]:
        """Closes the open item, then `response.completed` (or `response.incomplete` when the
        answer was cut short) with the full response."""
        if self._final is not None:
            return []
        events = self._close()
        status, incomplete = finish_status(self._finish_reason)
        self._final = self._envelope(
            status,
            list(self._items),
            usage=responses_usage(self._chat_usage),
            incomplete_details=incomplete,
            completed_at=int(time.time()) if status == "completed" else None,
        )
        name = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._event(name, response=self._final))
        return events

    def fail(self, code: str, message: str) -> list[bytes]:
        """`response.failed`: the stream broke. The response keeps what was streamed (an open
        item as `incomplete`); `code` must be one of the spec's codes, else `server_error`."""
        if self._final is not None:
            return []
        self._final = self._envelope(
            "failed",
            self._snapshot_output("incomplete"),
            usage=responses_usage(self._chat_usage) if self._chat_usage is not None else None,
            error={"code": code if code in ERROR_CODES else "server_error", "message": message},
        )
        self._open = None
        return [self._event("response.failed", response=self._final)]

    # --- items ----------------------------------------------------------------------------

    def _text(self, kind: str, text: str) -> list[bytes]:
        events: list[bytes] = []
        item = self._open
        if item is None or item.kind != "message":
            events += self._close()
            item = self._start_item(_Item("message", new_id("msg"), len(self._items)))
            events.append(self._item_event("response.output_item.added", item, "in_progress"))
        if not item.parts or item.parts[-1].kind != kind:
            if item.parts:
                events += self._close_part(item)
            item.parts.append(_Part(kind))
            events.append(
                self._part_event("response.content_part.added", item, len(item.parts) - 1)
            )
        item.parts[-1].text += text
        name = "response.output_text.delta" if kind == "output_text" else "response.refusal.delta"
        extra: dict[str, Any] = {"logprobs": []} if kind == "output_text" else {}
        events.append(self._event(name, **self._where(item), delta=text, **extra))
        return events

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        function = _dict(call.get("function"))
        index, call_id = call.get("index"), call.get("id")
        item = self._open
        events: list[bytes] = []
        if item is None or not _continues(item, index, call_id):
            events += self._close()
            item = self._start_item(
                _Item(
                    "function_call",
                    new_id("fc"),
                    len(self._items),
                    tool_index=index,
                    call_id=str(call_id or new_id("call")),
                    name=str(function.get("name") or ""),
                )
            )
            events.append(self._item_event("response.output_item.added", item, "in_progress"))
        elif not item.name and function.get("name"):
            item.name = str(function["name"])
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            item.arguments += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=item.output_index,
                    delta=arguments,
                )
            )
        return events

    def _start_item(self, item: _Item) -> _Item:
        self._open = item
        return item

    def _close(self) -> list[bytes]:
        """The done events of the open item, if any. The item the stream ended in is
        `incomplete` when the answer was cut short."""
        item = self._open
        if item is None:
            return []
        self._open = None
        status = "completed" if finish_status(self._finish_reason)[1] is None else "incomplete"
        events: list[bytes] = []
        if item.kind == "message":
            events += self._close_part(item)
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.output_index,
                    name=item.name,
                    arguments=item.arguments,
                )
            )
        events.append(self._item_event("response.output_item.done", item, status))
        self._items.append(item.as_dict(status))
        return events

    def _close_part(self, item: _Item) -> list[bytes]:
        index = len(item.parts) - 1
        part = item.parts[index]
        where = {**self._where(item), "content_index": index}
        if part.kind == "output_text":
            done = self._event("response.output_text.done", **where, text=part.text, logprobs=[])
        else:
            done = self._event("response.refusal.done", **where, refusal=part.text)
        return [done, self._part_event("response.content_part.done", item, index)]

    def _snapshot_output(self, open_status: str) -> list[dict[str, Any]]:
        output = list(self._items)
        if self._open is not None:
            output.append(self._open.as_dict(open_status))
        return output

    # --- encoding -------------------------------------------------------------------------

    def _where(self, item: _Item) -> dict[str, Any]:
        """Where a text event points: the item and its last (current) content part."""
        index = max(len(item.parts) - 1, 0)
        return {"item_id": item.id, "output_index": item.output_index, "content_index": index}

    def _item_event(self, name: str, item: _Item, status: str) -> bytes:
        return self._event(name, output_index=item.output_index, item=item.as_dict(status))

    def _part_event(self, name: str, item: _Item, index: int) -> bytes:
        return self._event(
            name,
            item_id=item.id,
            output_index=item.output_index,
            content_index=index,
            part=item.parts[index].as_dict(),
        )

    def _event(self, kind: str, /, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self._sequence}
        self._sequence += 1
        return encode_event(kind, orjson.dumps(payload))

    def _envelope(
        self,
        status: str,
        output: list[dict[str, Any]],
        *,
        usage: dict[str, Any] | None,
        incomplete_details: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        completed_at: int | None = None,
    ) -> dict[str, Any]:
        return response_object(
            self._request,
            response_id=self._id,
            created_at=self._created_at,
            model=self._model,
            status=status,
            output=output,
            usage=usage,
            incomplete_details=incomplete_details,
            error=error,
            completed_at=completed_at,
        )
