"""What every fake upstream does the same way: serve an aiohttp app on 127.0.0.1 at a free
port, and stop it again."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class LoopbackServer:
    """An aiohttp app on 127.0.0.1; `port` is known once `serve` has returned."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def serve(self, app: web.Application, **runner_options: Any) -> None:
        self._runner = web.AppRunner(app, access_log=None, **runner_options)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
