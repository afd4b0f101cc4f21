"""POST /v1/responses, GET and DELETE /v1/responses/{id}: OpenAI's Responses API, as the
Vercel AI SDK's default provider, `client.responses.create`, LangChain's
`use_responses_api=True` and Codex call it.

A model whose provider speaks the Responses API (`openai` with `responses: true`) gets the body
as the client sent it and its answer or events come back as its own bytes; any other model gets
the request translated to chat completions (`to_chat`) and its answer or stream translated back
(`from_chat`, `stream_from_chat`). Both kinds may sit in one fallback chain.

`previous_response_id` is resolved by the gateway from its own store (`store.responses`), so
it works on every backend: a translated model gets the earlier turns rebuilt as chat messages,
a native one the same turns as input items, unless the response it continues is one that same
provider keeps itself, which then gets the id as sent (its reasoning state included).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.config import ResponsesConfig
from gateway.errors import InvalidRequest, NotFound
from gateway.http.answers import json_response
from gateway.http.body import read_json_object
from gateway.http.request import PROCESS, begin, state_of
from gateway.http.stream import relay_stream
from gateway.ingress.openai_params import invalid_type
from gateway.ingress.responses import to_chat
from gateway.ingress.responses.continuing import ContinuingResponsesStream
from gateway.ingress.responses.from_chat import new_id, response_from_chat
from gateway.ingress.responses.stream import (
    ChatToResponsesStream,
    NativeResponsesStream,
    ResponsesClientStream,
)
from gateway.ingress.responses.stream_from_chat import ResponsesStreamWriter
from gateway.pipeline.context import RequestState, apply_request_context
from gateway.pipeline.request import ModelCall, admit
from gateway.providers.base import JsonAnswer
from gateway.providers.responses_events import open_responses_stream
from gateway.providers.upstream import OpenedStream
from gateway.store.responses import FoundItem, ResponseStore, StoredResponse

API = "responses"
REFERENCE = "item_reference"

# Parameters of OpenAI's that need state the gateway does not keep: refused rather than
# silently ignored, so the client knows.
_UNSUPPORTED = {
    "background": "Background responses are not supported by this gateway.",
    "conversation": "The Conversations API is not supported by this gateway; "
    "use previous_response_id.",
}


def validate_responses(body: dict[str, Any]) -> bool:
    """What the gateway relies on, in OpenAI's wording. Returns whether a stream was asked
    for."""
    for name, message in _UNSUPPORTED.items():
        if body.get(name) not in (None, False):
            raise InvalidRequest(message, param=name, code="unsupported_parameter")
    if "input" not in body and not body.get("previous_response_id"):
        raise InvalidRequest(
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    value = body.get("input")
    if value is not None and not isinstance(value, str | list):
        raise invalid_type("input", "a string or an array of input items", value)
    for name in ("stream", "store"):
        flag = body.get(name)
        if flag is not None and not isinstance(flag, bool):
            raise invalid_type(name, "a boolean", flag)
    previous = body.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise invalid_type("previous_response_id", "a string", previous)
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)):
        raise invalid_type("max_output_tokens", "an integer", limit)
    return body.get("stream") is True


def _input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """This turn's input as items (a string is one user message), what is stored with it."""
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    return []


def _replayed(item: dict[str, Any]) -> dict[str, Any] | None:
    """An earlier turn's item as input for a native upstream that does not have it: reasoning
    items only mean something to the upstream that made them (None: left out), and ids and
    statuses would be read as references to items it keeps."""
    if item.get("type") == "reasoning":
        return None
    return {k: v for k, v in item.items() if k not in ("id", "status")}


def _replayable(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [replayed for replayed in map(_replayed, items) if replayed is not None]


def _reference_id(item: dict[str, Any]) -> str | None:
    """The id an `item_reference` input item names; None for any other item."""
    if item.get("type") == REFERENCE and isinstance(item.get("id"), str):
        return str(item["id"])
    return None


def reference_ids(body: dict[str, Any]) -> list[str]:
    return [ref for ref in map(_reference_id, _input_items(body)) if ref is not None]


async def _previous(
    store: ResponseStore, body: dict[str, Any], owner: str
) -> StoredResponse | None:
    previous_id = body.get("previous_response_id")
    if not previous_id:
        return None
    previous = await store.get(str(previous_id), owner)
    if previous is None:
        raise InvalidRequest(
            f"Previous response with id '{previous_id}' not found.",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return previous


class _Turn:
    """One Responses request: the client's body, what it continues, how each kind of model is
    asked, and where its response is kept."""

    def __init__(
        self,
        body: dict[str, Any],
        previous: StoredResponse | None,
        store: ResponseStore,
        owner: str,
        found: dict[str, FoundItem] | None = None,
    ) -> None:
        self.body = body
        self.previous = previous
        self.requested = str(body.get("model") or "")
        # The `item_reference`s of the input that the gateway's store resolved; the rest
        # only an upstream that made them could.
        self._found = found or {}
        self._input = _input_items(body)
        references = [ref for ref in map(_reference_id, self._input) if ref is not None]
        self._unknown = [ref for ref in references if ref not in self._found]
        resolved = [self._resolved(item) for item in self._input]
        history = previous.continued() if previous is not None else []
        # What this response is stored with: every turn before its output, references
        # spelled out so that a later turn can replay it anywhere.
        self.conversation = [*history, *resolved]
        chat_source = {**body, "input": resolved} if references else body
        try:
            chat_history = to_chat.items_to_messages(history, param="previous_response_id")
            self.chat_body = to_chat.chat_request(chat_source, chat_history)
            self._chat_with_reasoning = to_chat.chat_request(
                chat_source, chat_history, reasoning=True
            )
        except to_chat.InvalidRequest as exc:
            raise InvalidRequest(str(exc), param=exc.param) from exc
        self._store = store
        self._owner = owner
        self._keeps = body.get("store") is not False
        self.kept_by: str | None = None  # the native provider that keeps it too, if any
        # The client's previous_response_id, when the upstream was sent the earlier turns
        # instead (its answer must still name it).
        self.replayed_previous: str | None = None

    def _resolved(self, item: dict[str, Any]) -> dict[str, Any]:
        ref = _reference_id(item)
        found = self._found.get(ref) if ref is not None else None
        return found.item if found is not None else item

    def chat_for(self, call: ModelCall, model_name: str) -> dict[str, Any]:
        """The chat body a translated model gets (`reasoning_effort` only where taken). An
        item reference the gateway cannot resolve is refused, not dropped: the turn it names
        would silently be missing."""
        if self._unknown:
            raise InvalidRequest(f"Item with id '{self._unknown[0]}' not found.", param="input")
        if call.runtime.config.models[model_name].reasoning:
            return self._chat_with_reasoning
        return self.chat_body

    def native_body(self, provider_name: str) -> dict[str, Any]:
        """The body a native model gets: the client's, with the earlier turns spelled out
        unless this provider keeps the response being continued, and each item reference to
        an item it does not keep spelled out too. Notes whether the provider will keep this
        one."""
        previous = self.previous
        replay = previous is not None and previous.kept_by != provider_name
        foreign = any(found.kept_by != provider_name for found in self._found.values())
        self.replayed_previous = None
        if not replay and not foreign:
            body = self.body
        else:
            body = {k: v for k, v in self.body.items() if k != "previous_response_id"}
            if previous is not None and not replay:
                body["previous_response_id"] = self.body["previous_response_id"]
            items: list[dict[str, Any]] = []
            for item in self._input:
                kept = self._native_item(item, provider_name, replay)
                if kept is not None:
                    items.append(kept)
            if previous is not None and replay:
                items = [*_replayable(previous.continued()), *items]
                self.replayed_previous = str(self.body["previous_response_id"])
            body["input"] = items
        self.kept_by = provider_name if body.get("store") is not False else None
        return body

    def _native_item(
        self, item: dict[str, Any], provider_name: str, replay: bool
    ) -> dict[str, Any] | None:
        ref = _reference_id(item)
        if ref is None:
            return _replayed(item) if replay else item
        found = self._found.get(ref)
        if found is None or found.kept_by == provider_name:
            return item  # the upstream has it (or may: the gateway does not)
        return _replayed(found.item)

    async def keep(self, response: dict[str, Any], config: ResponsesConfig) -> None:
        """Store the response (unless `store: false`), owned by the caller's key."""
        if not self._keeps or not isinstance(response.get("id"), str):
            return
        root = self.previous.conversation_id if self.previous is not None else None
        stored = StoredResponse(self._owner, response, self.conversation, self.kept_by, root)
        await self._store.save(stored, config)


async def create_response(request: web.Request) -> web.StreamResponse:
    state_of(request).api = API  # first: a refused key is a responses request too
    runtime, state, principal = begin(request, api_call=True)
    body = await read_json_object(request, runtime.max_body_bytes, runtime.body_timeout_s)
    state.stream = validate_responses(body)
    apply_request_context(state, principal, request.headers, body)
    process = request.app[PROCESS]
    previous = await _previous(process.responses, body, principal.name)
    # A chain of responses is one conversation (named by its first response), unless the
    # client names its own.
    if state.conversation is None and previous is not None:
        state.conversation = previous.conversation_id
    references = reference_ids(body)
    found = await process.responses.find_items(references, principal.name) if references else {}
    turn = _Turn(body, previous, process.responses, principal.name, found)
    call = await admit(
        process,
        runtime,
        state,
        principal,
        body.get("model"),
        turn.chat_body,
        completion=True,
        cache_body=body,
        # Only an answer that is not stored and continues nothing stored: a stored one needs
        # an id of its own, and a continuation's history belongs to one key.
        cacheable=body.get("store") is False and previous is None and not references,
    )
    if not state.stream:
        answer = await call.run(lambda model_name: _answer(call, turn, model_name))
        state.usage = answer.usage
        return json_response(answer.body)
    return relay_stream(
        state,
        lambda: call.run(lambda model_name: _stream(call, turn, model_name)),
        keepalive_s=runtime.config.server.keepalive_s,
        client=ResponsesClientStream(state),
        drain=process.drain,
    )


async def _answer(call: ModelCall, turn: _Turn, model_name: str) -> JsonAnswer:
    provider = call.provider_for(model_name)
    state = call.state
    config = call.runtime.config.responses
    if provider.speaks_responses:
        native = turn.native_body(provider.name)
        with state.waiting_upstream():
            answer = await provider.responses(call.upstream_call(model_name, native))
        response = orjson.loads(answer.body)
        if turn.replayed_previous is not None and isinstance(response, dict):
            response["previous_response_id"] = turn.replayed_previous
            answer = JsonAnswer(orjson.dumps(response), answer.usage)
        await turn.keep(response, config)
        return answer
    with state.waiting_upstream():
        chat = await provider.chat(call.upstream_call(model_name, turn.chat_for(call, model_name)))
    response = response_from_chat(
        orjson.loads(chat.body), request=turn.body, model=turn.requested or model_name
    )
    turn.kept_by = None
    await turn.keep(response, config)
    return JsonAnswer(orjson.dumps(response), chat.usage)


async def _stream(call: ModelCall, turn: _Turn, model_name: str) -> OpenedStream:
    provider = call.provider_for(model_name)
    config = call.runtime.config.responses

    async def keep(response: dict[str, Any]) -> None:
        await turn.keep(response, config)

    if provider.speaks_responses:
        native = turn.native_body(provider.name)
        upstream, first = await open_responses_stream(
            provider, call.upstream_call(model_name, native)
        )
        relayed = NativeResponsesStream(upstream, keep, turn.replayed_previous)
        if call.runtime.config.routing.midstream != "continue":
            return relayed, await relayed.look(first)

        def kept_here() -> None:
            turn.kept_by = None  # the upstream's copy is the broken one: the gateway keeps it

        writer = ResponsesStreamWriter(turn.body, turn.requested or model_name)
        continuing = ContinuingResponsesStream(
            call,
            model_name,
            lambda model: turn.chat_for(call, model),
            relayed,
            call.state.estimate.prompt if call.state.estimate is not None else 0,
            writer,
            keep,
            kept_here,
        )
        return continuing, await continuing.first(first)
    chat_body = turn.chat_for(call, model_name)
    inner, first = await call.open_chat_stream(
        model_name, chat_body, lambda model: turn.chat_for(call, model)
    )
    turn.kept_by = None
    writer = ResponsesStreamWriter(turn.body, turn.requested or model_name, new_id("resp"))
    translated = ChatToResponsesStream(inner, writer, keep)
    return translated, await translated.translate(first)


def _owned(
    request: web.Request,
) -> tuple[ResponseStore, str, str, RequestState]:
    """The store, the caller's key name and the id asked for; auth as for any /v1 call."""
    state_of(request).api = API
    _runtime, state, principal = begin(request)
    return request.app[PROCESS].responses, principal.name, request.match_info["response_id"], state


def _not_found(response_id: str) -> NotFound:
    return NotFound(
        f"Response with id '{response_id}' not found.", param="response_id", code="not_found"
    )


async def get_response(request: web.Request) -> web.StreamResponse:
    """A stored response, to the key that made it (any other key: not found)."""
    store, owner, response_id, _state = _owned(request)
    stored = await store.get(response_id, owner)
    if stored is None:
        raise _not_found(response_id)
    return json_response(orjson.dumps(stored.response))


async def delete_response(request: web.Request) -> web.StreamResponse:
    store, owner, response_id, _state = _owned(request)
    if not await store.delete(response_id, owner):
        raise _not_found(response_id)
    return json_response(
        orjson.dumps({"id": response_id, "object": "response.deleted", "deleted": True})
    )
