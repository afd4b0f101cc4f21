"""A legacy Completions stream translated from chat streams, one per prompt, one after the
other: the client sees one stream with one id, every prompt's choices numbered as OpenAI
numbers them (prompt `i`'s `n` choices from `i * n`), and one usage chunk adding them all up.

The first prompt's stream is opened by the attempt, so that a model failing before its first
event can still be replaced; the later ones are opened as each one ends, and a failure there is
a failure in the middle of the client's stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson

from gateway.ingress.completions.translate import CompletionsStreamWriter
from gateway.providers.base import EventStream, Usage, summed_usage, usage_from_openai
from gateway.providers.chat_events import EventKind, classify, payload
from gateway.providers.upstream import OpenedStream


class ChatToCompletionsStream(EventStream):
    def __init__(
        self,
        inner: EventStream,
        writer: CompletionsStreamWriter,
        open_prompt: Callable[[int], Awaitable[OpenedStream]],
        prompt_count: int,
        choices_per_prompt: int,
    ) -> None:
        self._inner = inner
        self._writer = writer
        self._open_prompt = open_prompt
        self._count = prompt_count
        self._per_prompt = choices_per_prompt
        self._prompt = 0  # the prompt whose stream is being read
        self._prompt_done = False  # its stream sent [DONE]
        self._finished = False  # the client's [DONE] went out
        self._usage: Usage | None = None  # the prompts' exact usage, summed as each ends
        self._prompt_usage: Usage | None = None  # the current prompt's, from its chunks
        self._prompt_counted = False

    def translate(self, events: list[bytes]) -> list[bytes]:
        """The client's events for some of the current prompt's chat events."""
        out: list[bytes] = []
        offset = self._prompt * self._per_prompt
        for event in events:
            if self._prompt_done or self._finished:
                break  # nothing after a prompt's [DONE] is for the client
            verdict = classify(event, strip_usage=False)
            if verdict.kind is EventKind.DONE:
                self._prompt_done = True
                if self._prompt == self._count - 1:
                    # Always the usage chunk: the relay reads it for the usage record and
                    # drops it when the client did not ask for it.
                    out.extend(self._writer.finish(include_usage=True))
                    self._finished = True
                continue
            if verdict.kind is EventKind.ERROR:
                out.append(event)  # already an OpenAI error event: the client's own shape
                self._finished = True
                continue
            data = payload(event)
            if data is None:
                continue  # an upstream comment: the gateway sends its own keep-alives
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict):
                if isinstance(chunk.get("usage"), dict):
                    self._prompt_usage = usage_from_openai(chunk["usage"])
                out.extend(self._writer.feed(chunk, index_offset=offset))
        return out

    async def next_events(self) -> list[bytes] | None:
        while True:
            if self._prompt_done and not self._finished:
                out = await self._next_prompt()
                if out:
                    return out
                continue
            events = await self._inner.next_events()
            if events is None:
                return None  # the end; without [DONE] first, the relay reports the cut
            if self._finished:
                continue  # read to its end, so the upstream connection is reusable
            out = self.translate(events)
            if out:
                return out

    async def _next_prompt(self) -> list[bytes]:
        """Open the next prompt's stream, once the last one is read to its end (it ends right
        after its [DONE]; read so that its connection goes back to the pool)."""
        while await self._inner.next_events() is not None:
            pass
        await self._inner.aclose(completed=True)
        self._end_prompt()
        self._prompt += 1
        self._prompt_done = False
        self._prompt_usage = None
        self._prompt_counted = False
        self._inner, first = await self._open_prompt(self._prompt)
        return self.translate(first)

    def _end_prompt(self) -> None:
        """Add the current prompt's usage to the sum, once."""
        if self._prompt_counted:
            return
        self._prompt_counted = True
        exact = self._inner.exact_usage() or self._prompt_usage
        self._usage = summed_usage(self._usage, exact)

    def exact_usage(self) -> Usage | None:
        # Asked once the stream has ended: the last prompt's usage is still to be added.
        self._end_prompt()
        return self._usage

    async def aclose(self, *, completed: bool) -> None:
        await self._inner.aclose(completed=completed)
