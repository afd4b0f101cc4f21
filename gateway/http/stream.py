"""Writing a stream to the client, event by event.

A stream starts once the pipeline has an upstream that gave a first event (`ModelCall.
chat_stream`), so a failure up to then still gets a real HTTP status (and, with routing, a
fallback). If that is slow, the answer is committed after `keepalive_s` and `: keep-alive`
comments are sent until it comes. From the first event on, each upstream event is written the
moment it is complete, as the bytes the stream gives: the upstream's own when the client speaks
the upstream's API, or already translated into the client's API by the stream its ingress
opened. What each event is (usage, error, the end) is decided by the client API's
`ClientStream.classify` (for chat, `providers.chat_events.classify`); this module only acts on
the verdict and writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web

from gateway.errors import GatewayError, ServiceUnavailable, UpstreamError, UpstreamFailure
from gateway.pipeline.context import RequestState
from gateway.pipeline.drain import Drain
from gateway.providers.chat_events import (
    CONTENT,
    EventKind,
    EventVerdict,
    classify_looked,
    may_matter,
)
from gateway.providers.upstream import OpenedStream
from gateway.redact import REDACT
from gateway.sse import KEEPALIVE, encode_data

log = logging.getLogger("gateway.relay")

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}

UNFINISHED = UpstreamError(
    "The upstream ended the stream before it finished; the answer is incomplete.",
    code="upstream_bad_response",
)
RELAY_FAILED = GatewayError("The gateway failed while relaying the stream.")
SHUTTING_DOWN = ServiceUnavailable(
    "The gateway is shutting down and ended this stream; retry the request.",
    code="shutting_down",
)


class ClientStream:
    """What the client's API makes of a stream. By default chat completions': the events pass
    through as the upstream's bytes, a usage-only chunk the client did not ask for is dropped,
    an error goes in-band as an OpenAI error event, keep-alives are SSE comments. An ingress
    whose API differs (its events already translated below, by the stream it opened) gives
    its own `needs_look`, `classify`, `keepalive` and `error_event`."""

    keepalive = KEEPALIVE

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        # False for an event that is surely content, to relay unread (nearly all of them);
        # True for one that may carry usage, an error or the end. A plain function, not a
        # method: it runs on every event of every stream.
        self.needs_look: Callable[[bytes], bool] = may_matter
        # What an event that needs a look is; a plain callable too (an ingress sets its own).
        # Asked only of events `needs_look` picked out, so it does not ask again.
        self.classify: Callable[[bytes], EventVerdict] = partial(
            classify_looked, strip_usage=strip_usage
        )

    def error_event(self, error: GatewayError) -> bytes:
        """The in-band error that ends a stream already begun."""
        return encode_data(error.body_bytes())


# Chat's (and legacy Completions') ClientStream keeps no state of its own, so every stream
# shares one of these two instead of making an object and a partial per stream.
_CHAT_CLIENTS = {
    include_usage: ClientStream(strip_usage=not include_usage) for include_usage in (False, True)
}


def chat_client(options: object) -> ClientStream:
    """The ClientStream for a chat-format stream whose body had these `stream_options`: the
    usage-only chunk is relayed only when the client asked for it (`include_usage: true`);
    the gateway always asks the upstream for usage."""
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return _CHAT_CLIENTS[include_usage]


class _KeepAlives:
    """`: keep-alive` comments while the first event is slow. Nothing happens unless
    `every_s` passes first: then the answer begins (its status can no longer change) and a
    comment goes out every `every_s` until `stop`. A timer, not a task per request, so that
    the common fast stream pays almost nothing for it (the event that wakes the comments'
    task is made only when they start)."""

    __slots__ = (
        "_every_s",
        "_keepalive",
        "_request",
        "_response",
        "_state",
        "_stopped",
        "_task",
        "_timer",
        "_wake",
    )

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        state: RequestState,
        every_s: float,
        keepalive: bytes,
    ) -> None:
        self._keepalive = keepalive
        self._request = request
        self._response = response
        self._state = state
        self._every_s = every_s
        self._stopped = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(every_s, self._start)

    def _start(self) -> None:
        self._wake = wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._send(wake))

    async def _send(self, wake: asyncio.Event) -> None:
        if self._stopped:  # the first event came as the timer fired
            return
        self._state.committed_before_answer = True
        with contextlib.suppress(ConnectionResetError):
            await _begin(self._response, self._request, self._state)
            while not self._stopped:
                await self._response.write(self._keepalive)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._every_s)

    async def stop(self) -> None:
        """No more comments. Waits for a write in progress to finish (never cuts one), so
        the answer's next bytes can follow at once."""
        self._timer.cancel()
        self._stopped = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            # A write that failed (the client went away) shows again on the answer's next
            # write, where it is handled; here it must not leave the opened stream unclosed.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)


def relay_stream(
    state: RequestState,
    start: Callable[[], Awaitable[OpenedStream]],
    *,
    keepalive_s: float,
    client: ClientStream,
    drain: Drain,
) -> RelayedStream:
    """The answer of a handler that streams: `return relay_stream(...)`. `start` finds an
    upstream that gives a first event (with retries and fallbacks) and raises GatewayError
    when none does. The gateway's outermost layer (`gateway.http.middleware`) relays it, once
    the handler has returned."""
    return RelayedStream(state, start, keepalive_s, client, drain)


_RelayWith = tuple[RequestState, Callable[[], Awaitable[OpenedStream]], float, ClientStream, Drain]
_WRITTEN: list[bytes] = []  # never appended to: `out` once written


class RelayedStream(web.StreamResponse):
    """A stream's answer, given back by its handler before anything is relayed, and relayed
    by the gateway's outermost layer. A stream may last minutes, thousands at once, and each
    coroutine frame kept for its length counts: this way neither the handler's frame (and
    what it refers to) nor aiohttp's routing frame above it is kept, and the whole stream
    runs in `relay` (opening it is `_open`'s, whose frame is gone by the time it runs)."""

    def __init__(
        self,
        state: RequestState,
        start: Callable[[], Awaitable[OpenedStream]],
        keepalive_s: float,
        client: ClientStream,
        drain: Drain,
    ) -> None:
        super().__init__(status=200, headers=SSE_HEADERS)
        # One attribute, prefixed (names must not meet aiohttp's own: `_start` is one), and
        # dropped when the relay takes it: the closure that opens the stream goes with it.
        self._relay_with: _RelayWith | None = (state, start, keepalive_s, client, drain)

    async def relay(self, request: web.Request) -> None:
        """Until `start` returns, nothing is sent unless it takes longer than `keepalive_s`:
        then the answer begins with keep-alive comments, and a failure after that can only
        be reported in-band. Then events are written as they come until the upstream ends,
        fails or the client leaves."""
        relay_with, self._relay_with = self._relay_with, None
        assert relay_with is not None, "relayed twice"
        state, start, keepalive_s, client, drain = relay_with
        del relay_with
        response = self
        opened = await _open(request, response, state, start, keepalive_s, client, drain)
        del start
        if opened is None:  # failed after its answer began: ended in-band
            return
        stream = opened[0]
        events: list[bytes] | None = opened[1]
        del opened
        if not response.prepared:
            try:
                await _begin(response, request, state)
            except BaseException:
                # The client left as its answer began (a reset, or the handler cancelled while
                # the headers were written): nobody will read this stream. Unclosed, it would
                # hold its upstream connection and buffers until the model's total timeout.
                state.stream_cut = True
                await stream.aclose(completed=False)
                raise
        saw_done = False
        completed = False
        needs_look = client.needs_look
        classify_event = client.classify
        waiting = state.waiting_upstream()  # one timer object for the whole stream
        captured = state.cache_events  # a list only when the response cache will store this
        try:
            while events is not None:
                out: list[bytes] = []
                for event in events:
                    if not needs_look(event):
                        out.append(event)  # a content delta or a comment: relayed, unread
                        continue
                    verdict = classify_event(event)
                    if verdict is not CONTENT:
                        # What it says, noted inline: this runs for several events per stream.
                        if verdict.usage is not None:
                            state.usage = verdict.usage
                        kind = verdict.kind
                        if kind is EventKind.DONE:
                            saw_done = True
                        elif kind is EventKind.ERROR:
                            # An upstream's own error event: it may echo a credential.
                            state.error = REDACT(verdict.error or "")
                            event = REDACT(event.decode("utf-8", "replace")).encode()
                    if verdict.relay:
                        out.append(event)
                if out:
                    await response.write(out[0] if len(out) == 1 else b"".join(out))
                    state.streamed_events += len(out)
                    if captured is not None:
                        captured.extend(out)
                    if state.first_token_at is None:
                        state.first_token_at = time.perf_counter()
                # What was written is not kept while the next events are awaited (a stream
                # waits far longer than it writes, and real events are hundreds of bytes).
                out, event, events = _WRITTEN, b"", None
                with waiting:
                    events = await stream.next_events()
            completed = True
            if not saw_done and state.error is None:
                # A clean end would tell the client its answer is whole: it is not.
                state.stream_cut = True
                state.error = "upstream ended the stream without [DONE]"
                await _end_with_error(response, client.error_event(UNFINISHED))
                return
        except UpstreamFailure as failure:
            state.stream_cut = True
            if state.attempt_loop is not None and state.model:
                # A failed attempt too (a reset, a `stall`): logged, counted, toward cooldown.
                await state.attempt_loop.note_failure(state.model, failure)
            state.error = failure.message
            await _end_with_error(response, client.error_event(failure.to_client_error()))
        except ConnectionResetError:
            state.stream_cut = True
            state.error = "client disconnected"
            raise
        except asyncio.CancelledError:
            state.stream_cut = True
            if drain.grace_over:
                state.error = "ended by gateway shutdown"
                await _end_with_error(response, client.error_event(SHUTTING_DOWN))
            else:
                state.error = "client disconnected"
            raise
        except Exception:
            # The gateway's own bug, after the answer was committed: it ends in-band, the stream
            # closed properly, rather than with a second answer written into its body.
            log.exception("stream failed", extra={"request_id": state.request_id})
            state.stream_cut = True
            state.error = "the gateway failed while relaying the stream"
            await _end_with_error(response, client.error_event(RELAY_FAILED))
        finally:
            exact = stream.exact_usage()
            if exact is not None:
                state.usage = exact
            await stream.aclose(completed=completed)
        if completed:
            with contextlib.suppress(ConnectionResetError):
                await response.write_eof()


async def _open(
    request: web.Request,
    response: web.StreamResponse,
    state: RequestState,
    start: Callable[[], Awaitable[OpenedStream]],
    keepalive_s: float,
    client: ClientStream,
    drain: Drain,
) -> OpenedStream | None:
    """The opened stream, with keep-alive comments while it is slow to come; None when it
    failed after the comments had begun the answer (the error then went in-band)."""
    keepalives = _KeepAlives(request, response, state, keepalive_s, client.keepalive)
    opened: OpenedStream | None = None
    try:
        try:
            with state.waiting_upstream():
                opened = await start()
        finally:
            await keepalives.stop()
    except GatewayError as error:
        state.error = state.error or error.message
        if not response.prepared:
            raise
        await _end_with_error(response, client.error_event(error))
        return None
    except asyncio.CancelledError:
        if opened is not None:
            # Cancelled while the keep-alives stopped: nobody will read this stream.
            await opened[0].aclose(completed=False)
        if drain.grace_over and response.prepared:
            await _end_with_error(response, client.error_event(SHUTTING_DOWN))
        raise
    return opened


async def _begin(response: web.StreamResponse, request: web.Request, state: RequestState) -> None:
    state.stamp(response.headers)
    state.answer_started = True
    await response.prepare(request)
    # A stream may stay open for minutes. Its headers are written now: the mapping of them
    # goes (about 2 KB with the keys aiohttp made to write them). aiohttp's idle timer for
    # the connection has nothing to watch while an answer is written: keep_alive cancels it
    # (aiohttp arms one again when the request ends and the connection goes idle).
    response.headers.clear()
    request.protocol.keep_alive(True)


async def _end_with_error(response: web.StreamResponse, event: bytes) -> None:
    """The stream has begun: the error goes in-band, and there is no [DONE]."""
    with contextlib.suppress(ConnectionResetError):
        await response.write(event)
        await response.write_eof()
