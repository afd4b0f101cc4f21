"""Streams that survive (`routing.midstream: continue`): a text stream that fails after its
first event goes on with the next model, spliced into the same client stream.

`ContinuingStream` sits right above the provider's chat stream and below every ingress
translator, so a continued stream is one chat stream to the chat relay and to the Messages,
Responses and Completions translators alike. It reads each chunk (which a plain relay does not:
this is the feature's cost, paid only when it is on) to keep the text sent so far and to know
whether the answer is still plain text. When the upstream fails (a reset, a `stall`, an error
event, an end without a `finish_reason`), it asks the next model of the chain (the same model
again, after the usual backoff, when it was the last) to continue that text, and hands on the
continuation's chunks as if they were the first stream's:
- every chunk gets the first stream's `id`, `created`, `model` (and `system_fingerprint`);
- the continuation's role chunk is dropped: the client has had one;
- a repeat of the text before the seam is trimmed (`pipeline.seam`);
- the usage chunk adds every model's tokens (a failed stream's own are estimated).

How a model is asked to continue depends on its provider: an assistant prefill where the API
has one (`Provider.continues_by_prefill`, Anthropic's), else the partial answer as an assistant
turn and an instruction to go on from its last character. An answer that is not plain text (a
tool call, several choices) cannot be spliced: its failure stays the in-band error it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from gateway.errors import UpstreamFailure
from gateway.failures import FailureKind
from gateway.metrics import STREAM_RECOVERIES
from gateway.pipeline.attempts import AttemptLoop, backoff_delay
from gateway.pipeline.context import RequestState, Segment
from gateway.pipeline.runtime import Runtime
from gateway.pipeline.seam import Seam, prefill_seam
from gateway.providers.base import (
    EventStream,
    Provider,
    UpstreamCall,
    Usage,
    summed_usage,
    usage_from_openai,
)
from gateway.providers.chat_events import failure_from_error_event, is_error_payload, payload
from gateway.providers.upstream import OpenedStream, open_stream
from gateway.tokens import prompt_tokens, text_tokens


class ModelCall(Protocol):
    """What a continuation needs of `pipeline.request.ModelCall` (which builds this stream:
    a protocol here, not an import, keeps the two modules out of a cycle)."""

    @property
    def state(self) -> RequestState: ...
    @property
    def attempts(self) -> AttemptLoop: ...
    @property
    def runtime(self) -> Runtime: ...

    def provider_for(self, model_name: str) -> Provider: ...

    def upstream_call(
        self, model_name: str, body: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> UpstreamCall: ...


MAX_SEAMS = 3  # continuations per request: a chain that keeps failing ends in-band after these

CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly from the character where it "
    "stopped, as if you had never been interrupted: do not repeat any of it, do not comment "
    "on the interruption, do not start over."
)

BodyFor = Callable[[str], dict[str, Any]]


def continuation_body(body: dict[str, Any], sent: str, *, prefill: bool) -> dict[str, Any]:
    """The chat body asking a model to go on from `sent`: the original conversation, then
    the partial answer (a prefill, or an assistant turn and the instruction), with what was
    already written taken off `max_tokens`."""
    messages = list(body.get("messages") or [])
    if prefill:
        if sent:
            messages.append({"role": "assistant", "content": sent})
    elif sent:
        messages.append({"role": "assistant", "content": sent})
        messages.append({"role": "user", "content": CONTINUE_INSTRUCTION})
    continued = {**body, "messages": messages}
    written = text_tokens(sent)
    for limit in ("max_tokens", "max_completion_tokens"):
        value = continued.get(limit)
        if isinstance(value, int) and not isinstance(value, bool):
            continued[limit] = max(1, value - written)
    return continued


def usage_as_openai(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _data_event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


class ContinuingStream(EventStream):
    """A chat stream that, failing after its first event, goes on with the next model."""

    def __init__(
        self,
        call: ModelCall,
        model_name: str,
        body_for: BodyFor,
        inner: EventStream,
        prompt_estimate: int,
    ) -> None:
        self._call = call
        self._model = model_name
        self._body_for = body_for
        self._inner = inner
        self._prompt_estimate = prompt_estimate  # of the body the current stream answers
        self._sent: list[str] = []  # the answer's text as the client got it
        self._segment_text = 0  # characters the current stream contributed
        self._finished = False  # a finish_reason or [DONE] came: nothing to continue
        self._text_only = True  # False once a tool call or a second choice shows
        self._identity: dict[str, Any] | None = None  # the first chunk's id, created, model
        self._continued = False  # the current stream is a continuation: its chunks rewritten
        self._seam: Seam | None = None
        self._prior: Usage | None = None  # every earlier stream's usage, summed
        self._pending: UpstreamFailure | None = None  # came after content in the same read
        self._seams = 0

    @classmethod
    def after(
        cls,
        call: ModelCall,
        model_name: str,
        body_for: BodyFor,
        failed: EventStream,
        sent: str,
        prompt_tokens: int,
    ) -> ContinuingStream:
        """For a stream this class did not read, in another API than chat (a native Anthropic
        Messages stream): it failed at `model_name` after writing `sent`, all plain text, and
        `recover` goes on from there. Only its chunks from then on are this class's own."""
        stream = cls(call, model_name, body_for, failed, prompt_tokens)
        if sent:
            stream._sent.append(sent)
        stream._segment_text = len(sent)
        return stream

    async def recover(self, failure: UpstreamFailure) -> list[bytes]:
        """The continuation's first chunks, as for a chat stream that failed (`failure`
        raised again when nothing can continue it)."""
        return await self._recover(failure)

    def first(self, events: list[bytes]) -> list[bytes]:
        """The first stream's first events, read as every later one is."""
        out, self._pending = self._read(events)
        return out

    # --- reading ------------------------------------------------------------------------

    def _read(self, events: list[bytes]) -> tuple[list[bytes], UpstreamFailure | None]:
        """What of `events` goes on (rewritten for a continuation), and the failure an error
        event among them means (what follows it is dropped)."""
        out: list[bytes] = []
        for event in events:
            data = payload(event)
            if data is None:
                if not self._continued:
                    out.append(event)  # an upstream comment, relayed as before
                continue
            if data == b"[DONE]":
                self._finished = True
                out.append(event)
                continue
            if is_error_payload(data):
                return out, failure_from_error_event(data, self._what())
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                out.append(event)  # not for this module to judge: relayed as it came
                continue
            if not isinstance(chunk, dict):
                out.append(event)
                continue
            rewritten = self._note(chunk)
            if not self._continued:
                out.append(event)  # the first stream's own bytes, unchanged
            elif rewritten is not None:
                out.append(_data_event(rewritten))
        return out, None

    def _note(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """Note what a chunk says; for a continuation, the chunk as the client gets it (None:
        nothing left to send)."""
        if self._identity is None:
            self._identity = {
                key: chunk[key]
                for key in ("id", "created", "model", "system_fingerprint")
                if key in chunk
            }
        continued = self._continued
        usage = chunk.get("usage")
        if isinstance(usage, dict) and self._prior is not None:
            summed = summed_usage(self._prior, usage_from_openai(usage))
            if summed is not None:
                chunk["usage"] = usage_as_openai(summed)
        choices = chunk.get("choices")
        keep = bool(chunk.get("usage"))
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                if choice.get("index", 0) != 0:
                    self._text_only = False
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    if delta.get("tool_calls") or delta.get("function_call"):
                        self._text_only = False
                    content = delta.get("content")
                    if continued:
                        delta.pop("role", None)
                        seam = self._seam
                        if seam is not None and seam.open:
                            content = seam.feed(content) if isinstance(content, str) else ""
                            if choice.get("finish_reason") is not None:
                                content += seam.flush()  # the end decides an open seam
                        if content:
                            delta["content"] = content
                        else:
                            delta.pop("content", None)
                        keep = keep or bool(delta)
                    if isinstance(content, str) and content:
                        self._sent.append(content)
                        self._segment_text += len(content)
                if choice.get("finish_reason") is not None:
                    self._finished = True
                    keep = True
        if not continued:
            return None
        if not keep:
            return None
        chunk.update(self._identity or {})
        return chunk

    def _what(self) -> str:
        return f"{self._call.provider_for(self._model).name}/{self._model}"

    # --- the stream -----------------------------------------------------------------------

    async def next_events(self) -> list[bytes] | None:
        while True:
            failure, self._pending = self._pending, None
            if failure is None:
                try:
                    events = await self._inner.next_events()
                except UpstreamFailure as exc:
                    failure = exc
                else:
                    if events is None:
                        if self._finished:
                            return None
                        failure = UpstreamFailure(
                            FailureKind.BAD_RESPONSE,
                            f"{self._what()}: ended the stream before it finished",
                        )
                    else:
                        out, failure = self._read(events)
                        if failure is None:
                            if out:
                                return out
                            continue
                        if out:
                            self._pending = failure  # the content before the error first
                            return out
            out = await self._recover(failure)
            if out:
                return out

    async def _recover(self, failure: UpstreamFailure) -> list[bytes]:
        """Continue on the next model, or raise `failure` when the answer cannot be."""
        if not self._text_only or self._finished or self._seams >= MAX_SEAMS:
            raise failure
        call = self._call
        state = call.state
        loop = call.attempts
        failed = self._model
        await loop.note_failure(failed, failure)
        segment = Segment(
            failed,
            failure.kind,
            Usage(self._prompt_estimate, -(-self._segment_text // 4)),  # as tokens.text_tokens
        )
        exact = self._inner.exact_usage()
        if exact is not None:
            segment.usage = exact
        await self._inner.aclose(completed=False)
        self._seams += 1
        sent = "".join(self._sent)
        for model in loop.continuation_candidates(failed):
            if model == failed:
                delay = backoff_delay(0, failure.retry_after)
                if delay:
                    with state.waiting_upstream():
                        await asyncio.sleep(delay)
            elif not await loop.gate.take(model):
                continue
            provider = call.provider_for(model)
            prefill = provider.continues_by_prefill
            seam: Seam
            if prefill:
                prefix, seam = prefill_seam(sent)
            else:
                prefix, seam = sent, Seam(sent)
            body = continuation_body(self._body_for(model), prefix, prefill=prefill)
            state.attempts += 1
            try:
                with state.waiting_upstream():
                    opened: OpenedStream = await open_stream(
                        provider, call.upstream_call(model, body)
                    )
            except UpstreamFailure as again:
                await loop.note_failure(model, again)
                if model != failed:
                    await loop.gate.give_back(model)
                continue
            if model != failed:
                # The failed model serves this request no more: its own limits are given
                # back now, as for any failed attempt (the key's stay held to the end).
                await loop.gate.give_back(failed)
            STREAM_RECOVERIES.labels(state.tier, failed, model, failure.kind).inc()
            if state.recovered is None:
                state.recovered = []
            state.recovered.append(segment)
            state.model = model
            state.provider = call.runtime.config.models[model].provider
            self._prior = summed_usage(self._prior, segment.usage)
            self._model = model
            self._inner, first = opened
            self._prompt_estimate = prompt_tokens(body)
            self._segment_text = 0
            self._continued = True
            self._seam = seam
            out, self._pending = self._read(first)
            return out
        raise failure

    def exact_usage(self) -> Usage | None:
        exact = self._inner.exact_usage()
        return summed_usage(self._prior, exact) if exact is not None else None

    async def aclose(self, *, completed: bool) -> None:
        await self._inner.aclose(completed=completed)


class NativeContinuation(EventStream):
    """The shared half of a native stream that survives (the Messages, Responses and legacy
    Completions ingress, each relaying an upstream's own events): until a failure, events are
    pulled from `source`, read by the subclass (`_read`: what to relay, and the failure an
    error event among them means) and relayed; on a failure the subclass continues
    (`_continue`: a chat `ContinuingStream.after` written in its API, set as `_continued`, or
    the failure raised when the answer cannot be continued), and from then on the
    continuation is the stream. Text before an error event reaches the client before the
    continuation does."""

    def __init__(
        self,
        call: ModelCall,
        model_name: str,
        chat_for: BodyFor,
        source: EventStream,
        prompt_estimate: int,
        finish_marker: str,
    ) -> None:
        self._call = call
        self._model = model_name
        self._chat_for = chat_for
        self._source = source
        self._prompt = prompt_estimate
        self._finish_marker = finish_marker  # what an unfinished end lacked, for its message
        self._text: list[str] = []  # the text relayed so far: what the next model goes on from
        self._text_only = True
        self._finished = False  # the answer's end came: nothing left to continue
        self._pending: UpstreamFailure | None = None
        self._continued: EventStream | None = None

    def _read(self, events: list[bytes]) -> tuple[list[bytes], UpstreamFailure | None]:
        raise NotImplementedError

    async def _continue(self, failure: UpstreamFailure) -> list[bytes]:
        raise NotImplementedError

    async def _pull(self) -> list[bytes] | None:
        return await self._source.next_events()

    async def _relay(self, events: list[bytes]) -> list[bytes]:
        return events

    def _what(self) -> str:
        return f"{self._call.provider_for(self._model).name}/{self._model}"

    def _chat_after(self) -> ContinuingStream:
        """The chat stream that goes on from the text relayed so far."""
        return ContinuingStream.after(
            self._call, self._model, self._chat_for, self._source, "".join(self._text), self._prompt
        )

    async def next_events(self) -> list[bytes] | None:
        while True:
            if self._continued is not None:
                return await self._continued.next_events()
            failure, self._pending = self._pending, None
            if failure is None:
                try:
                    events = await self._pull()
                except UpstreamFailure as exc:
                    failure = exc
                else:
                    if events is None:
                        if self._finished:
                            return None
                        failure = UpstreamFailure(
                            FailureKind.BAD_RESPONSE,
                            f"{self._what()}: ended the stream before {self._finish_marker}",
                        )
                    else:
                        out, failure = self._read(events)
                        if failure is None:
                            return await self._relay(out)
                        if out:
                            self._pending = failure  # the text before the error first
                            return await self._relay(out)
            out = await self._continue(failure)
            if out:
                return out

    def exact_usage(self) -> Usage | None:
        if self._continued is not None:
            return self._continued.exact_usage()
        return self._source.exact_usage()

    async def aclose(self, *, completed: bool) -> None:
        if self._continued is not None:
            await self._continued.aclose(completed=completed)
        else:
            await self._source.aclose(completed=completed)
