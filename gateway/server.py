"""Running the application: a server object tests and the CLI start the same way."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.handlers.common import RUNTIME
from gateway.runtime import build_runtime

log = logging.getLogger("gateway.server")


class GatewayServer:
    """One gateway listening on one address."""

    def __init__(self, config: GatewayConfig, host: str | None = None, port: int | None = None):
        self.config = config
        self.host = host if host is not None else config.server.host
        self.port = port if port is not None else config.server.port
        self.app = create_app(build_runtime(config))
        # handler_cancellation: a client that disconnects cancels its handler at once, which
        # cancels the upstream request, also while the gateway waits for a first token.
        self._runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=config.server.shutdown_grace_s,
        )

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("gateway listening", extra={"host": self.host, "port": self.port})

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish within the grace period, close."""
        self.app[RUNTIME].draining = True
        await self._runner.cleanup()


async def serve_until_signalled(server: GatewayServer) -> None:
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_s": server.config.server.shutdown_grace_s})
    await server.stop()
    log.info("stopped")
