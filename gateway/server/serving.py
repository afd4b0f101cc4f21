"""Running the application: a server object tests and the CLI start the same way."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.limits.factory import build_cooldowns, build_limiter
from gateway.ops.reload import POLL_S, Reloader
from gateway.pipeline.keys import RuntimeKeys
from gateway.pipeline.process import GatewayProcess
from gateway.pipeline.runtime import build_runtime
from gateway.server.app import create_app, create_metrics_app
from gateway.server.protocol import GatewayAppRunner
from gateway.store.keys import build_key_store
from gateway.store.redis import SharedRedis, redis_config, uses_redis

log = logging.getLogger("gateway.server")


class GatewayServer:
    """One gateway listening on one address."""

    def __init__(
        self,
        config: GatewayConfig,
        host: str | None = None,
        port: int | None = None,
        *,
        config_path: str | None = None,
        reload_poll_s: float = POLL_S,
    ) -> None:
        self.config = config
        self.host = host if host is not None else config.server.host
        self.port = port if port is not None else config.server.port
        redis = SharedRedis(redis_config(config)) if uses_redis(config) else None
        # Runtime keys only mean something while auth is on (a `keys:` section).
        store = (
            build_key_store(config.keys_db, redis if config.redis else None, config_path)
            if config.keys is not None
            else None
        )
        self.process = GatewayProcess(
            build_runtime(config, runtime_keys=RuntimeKeys(store)),
            build_limiter(config.limits, redis),
            build_cooldowns(config.limits, redis),
            redis=redis,
        )
        self.reloader = Reloader(self.process, config_path, reload_poll_s) if config_path else None
        self.app = create_app(self.process, self.reloader)
        self._stopped = False
        # handler_cancellation: a client that disconnects cancels its handler at once, which
        # cancels the upstream request, also while the gateway waits for a first token.
        # The grace period is managed by stop(); by the time the runner cleans up, what is
        # left has been told to end.
        self._runner = GatewayAppRunner(
            self.app,
            self.process.pending,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=2.0,
        )
        self.metrics_port = config.server.metrics_port
        self._metrics_runner = (
            web.AppRunner(create_metrics_app(self.process), access_log=None)
            if self.metrics_port is not None
            else None
        )

    async def start(self) -> None:
        self.port = await _listen(self._runner, self.host, self.port)
        if self._metrics_runner is not None and self.metrics_port is not None:
            self.metrics_port = await _listen(self._metrics_runner, self.host, self.metrics_port)
        log.info(
            "gateway listening",
            extra={"host": self.host, "port": self.port, "metrics_port": self.metrics_port},
        )

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Stop accepting (and report not ready), let requests in flight finish within
        `server.shutdown_grace_s`, end the streams still running with an in-band error,
        then flush and close everything. Stopping a stopped server does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self.process.draining = True
        for site in list(self._runner.sites):
            await site.stop()
        grace = self.config.server.shutdown_grace_s
        if not await self.process.wait_idle(grace):
            ended = self.process.drain.end_remaining()
            log.warning(
                "grace period over; ending requests still running",
                extra={"requests": ended, "grace_s": grace},
            )
            await self.process.wait_idle(2.0)
        await self._runner.cleanup()
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()


async def _listen(runner: web.AppRunner, host: str, port: int) -> int:
    """Start listening; the port actually bound (port 0 asks the OS for a free one)."""
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return port


# Ten times CPython's default. Every request allocates a few hundred short-lived containers, and
# with 64 requests in flight the default threshold (700) runs a young-generation collection
# every few requests that walks all their live state: ~5% of the gateway's CPU on the benchmark.
GC_YOUNG_THRESHOLD = 7000


def tune_gc() -> None:
    """Once the server is up: what startup built (config, app, imported modules) lives as long
    as the process, so it is frozen out of every later collection; young collections run less
    often. Cyclic garbage is still collected, only in bigger batches."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def serve_until_signalled(server: GatewayServer) -> None:
    await server.start()
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloader = server.reloader
    if reloader is not None:
        loop.add_signal_handler(
            signal.SIGHUP, lambda: server.process.in_background(_reload(reloader))
        )
    await stop.wait()
    log.info("shutting down", extra={"grace_s": server.config.server.shutdown_grace_s})
    await server.stop()
    log.info("stopped")


async def _reload(reloader: Reloader) -> None:
    await reloader.reload("SIGHUP")
