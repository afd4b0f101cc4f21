"""The HTTP connection layer under the app: what aiohttp answers before any handler runs.

- **Protocol errors in the API's shape.** A request aiohttp's parser refuses (a URL or header
  past its size limit, too many headers, bad framing) never reaches the app or its middleware;
  aiohttp answers a `text/plain` 400 and logs a traceback. Here it gets a JSON error with the
  status that says what was wrong (414 for the URL, 431 for headers, 400 for the rest) and one
  log line. The path is not known at that point (the parser failed), so the one envelope is
  read by both vendors' clients: OpenAI's `error` object (message, type, param, code) under
  Anthropic's top-level `"type": "error"` (Anthropic's own error object is the same `type` and
  `message`; OpenAI's clients ignore the extra key).
- **Slow clients cannot hold many connections.** A connection counts against its client
  address from the moment it opens until its first request's headers are parsed, and again
  while a body is read slowly (`gateway.http.body`); past `server.max_pending_per_address`
  such connections from one address, a new one is closed at once. Connections that send
  complete requests promptly never count for long, whatever their number.

This subclasses aiohttp's `Server` and `RequestHandler` (the only way in: the parser's errors
bypass middlewares); tests/test_protocol_errors.py pins the behaviour, so an aiohttp upgrade
that changes the internals shows up there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from gateway.http.middleware import OUTERMOST, Handler, Wrap
from gateway.http.slim import slim_connection
from gateway.pipeline.pending import PendingClients

log = logging.getLogger("gateway.protocol")
ServerHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]

# The parser's limits. The request line may be longer than a header field, so a too-long
# line says which it was by its limit: 414 for the URL, 431 for a header.
MAX_LINE_SIZE = 16384
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 128


def protocol_error(exc: HttpProcessingError, max_line_size: int) -> tuple[int, str, str]:
    """(status, code, message) for a request the parser refused."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == max_line_size:
            return 414, "uri_too_long", f"The request URL is longer than {limit} bytes."
        return (
            431,
            "request_header_fields_too_large",
            f"A request header is longer than {limit} bytes.",
        )
    text = str(exc.message or exc)
    if "Too many headers" in text:
        return 431, "request_header_fields_too_large", "The request has too many headers."
    return 400, "bad_request", f"The request could not be parsed as HTTP: {text}"


def _error_body(message: str, code: str) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    return orjson.dumps({"type": "error", "error": error})


class GatewayRequestHandler(RequestHandler):
    """One client connection: aiohttp's, with the two behaviours above."""

    # aiohttp's handler has slots; without these, every connection would carry a dict too.
    __slots__ = ("_pending", "_pending_address")

    def __init__(self, manager: Server, pending: PendingClients, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._pending = pending
        self._pending_address: str | None = None  # counted, until its first request
        slim_connection(self)  # it may hold a stream open for minutes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        super().connection_made(transport)
        if not address:
            return
        if not self._pending.enter(address):
            transport.close()
            return
        self._pending_address = address

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._pending_address is not None and self._request_count > 0:
            self._leave()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._leave()
        super().connection_lost(exc)

    def _leave(self) -> None:
        if self._pending_address is not None:
            self._pending.leave(self._pending_address)
            self._pending_address = None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionResetError):
            # The client left while its answer was written (a stream, mostly): the middleware
            # has recorded it (499), and it is no error of the gateway's. aiohttp would log a
            # traceback for each, hundreds at the end of every load test's run.
            if request.writer.output_size > 0:
                raise ConnectionError("the client left mid-answer") from exc  # aiohttp: quiet
            response = web.Response(status=499)
            response.force_close()
            return response
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        answer_status, code, text = protocol_error(exc, self.max_line_size)
        log.warning(
            "request refused by the HTTP parser",
            extra={"status": answer_status, "remote": request.remote, "reason": str(exc)[:200]},
        )
        response = web.Response(
            body=_error_body(text, code), status=answer_status, content_type="application/json"
        )
        response.force_close()  # the parser's state is lost: the connection cannot go on
        return response


class GatewayWebServer(Server):
    """aiohttp's Server, making `GatewayRequestHandler`s, serving the app through `wrap`."""

    def __init__(self, base: Server, pending: PendingClients, wrap: Wrap | None = None) -> None:
        # Built from the Server the app runner made, so the app's handler, request factory
        # and handler arguments (access log, cancellation) are kept as they are.
        # The app's request factory makes `web.Request`s: the casts say so to the types.
        handler = base.request_handler
        if wrap is not None:
            handler = cast(ServerHandler, wrap(cast(Handler, handler)))
        super().__init__(
            handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self.pending = pending

    def __call__(self) -> RequestHandler:
        kwargs = {
            "max_line_size": MAX_LINE_SIZE,
            "max_field_size": MAX_FIELD_SIZE,
            "max_headers": MAX_HEADERS,
            **self._kwargs,
        }
        return GatewayRequestHandler(self, self.pending, loop=self._loop, **kwargs)


class GatewayAppRunner(web.AppRunner):
    """`web.AppRunner` serving through `GatewayWebServer`, and through the app's `OUTERMOST`
    layer when it has one (the gateway's: `gateway.http.middleware`)."""

    def __init__(self, app: web.Application, pending: PendingClients, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._pending = pending

    async def _make_server(self) -> Server:
        return GatewayWebServer(
            await super()._make_server(), self._pending, self._app.get(OUTERMOST)
        )
