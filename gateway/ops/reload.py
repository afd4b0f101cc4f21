"""Live config reload: the file is watched (polled, no extra daemon), and SIGHUP and
`POST /admin/reload` reload it too.

A new config is parsed and checked completely and its providers built; only then is it swapped
in, at once. Requests in flight finish on the runtime they started with. An invalid file
changes nothing: the running config stays, the log says exactly what is wrong and where, and
`gateway_config_reloads_total{result="error"}` counts it. Limits and cooldown state live in the
process, not the runtime, so they survive.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.metrics import CONFIG_RELOADS
from gateway.periodic import Periodic
from gateway.pipeline.process import GatewayProcess
from gateway.pipeline.runtime import build_runtime

log = logging.getLogger("gateway.reload")

POLL_S = 1.0

# Settings read once at start: a reload that changes them says so instead of pretending.
_RESTART_ONLY = (
    ("server", "host"),
    ("server", "port"),
    ("server", "metrics_port"),
    ("server", "shutdown_grace_s"),
    ("limits", "backend"),
    ("limits", "redis_url"),
    ("limits", "lease_ttl_s"),
    ("usage", "sinks"),
    ("usage", "queue_size"),
)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    problems: tuple[str, ...] = ()


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        stat = path.stat()  # follows symlinks: a ConfigMap's ..data swap changes the inode
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class Reloader:
    def __init__(
        self, process: GatewayProcess, path: str | os.PathLike[str], poll_s: float = POLL_S
    ) -> None:
        self.process = process
        self.path = Path(path)
        self._lock = asyncio.Lock()
        self._signature = _signature(self.path)
        self._digest = _digest(self.path)
        self._watcher = Periodic("config-watch", poll_s, self._check_file)

    async def reload(self, trigger: str) -> ReloadResult:
        async with self._lock:
            return self._reload(trigger)

    def _reload(self, trigger: str) -> ReloadResult:
        self._signature = _signature(self.path)
        self._digest = _digest(self.path)
        try:
            config = load_config(self.path)
            runtime = build_runtime(config, previous=self.process.current)
        except ConfigError as exc:
            return self._rejected(trigger, list(exc.problems))
        except Exception as exc:
            return self._rejected(trigger, [f"{type(exc).__name__}: {exc}"])
        self._warn_restart_only(self.process.current.config, config)
        self.process.swap(runtime)
        CONFIG_RELOADS.labels("ok").inc()
        log.info("config reloaded", extra={"path": str(self.path), "trigger": trigger})
        return ReloadResult(True)

    def _rejected(self, trigger: str, problems: list[str]) -> ReloadResult:
        CONFIG_RELOADS.labels("error").inc()
        log.error(
            "config reload rejected; the running config stays",
            extra={"path": str(self.path), "trigger": trigger, "problems": problems},
        )
        return ReloadResult(False, tuple(problems))

    def _warn_restart_only(self, old: GatewayConfig, new: GatewayConfig) -> None:
        for section, name in _RESTART_ONLY:
            before = getattr(getattr(old, section), name)
            after = getattr(getattr(new, section), name)
            if before != after:
                log.warning(
                    "this setting takes effect at the next restart",
                    extra={"setting": f"{section}.{name}"},
                )
        if old.redis != new.redis:
            log.warning("this setting takes effect at the next restart", extra={"setting": "redis"})

    @property
    def poll_s(self) -> float:
        return self._watcher.interval_s

    @poll_s.setter
    def poll_s(self, seconds: float) -> None:
        self._watcher.interval_s = seconds  # read at each tick: takes effect at once

    def start(self) -> None:
        self._watcher.start()

    async def stop(self) -> None:
        await self._watcher.stop()

    async def _check_file(self) -> None:
        signature = _signature(self.path)
        if signature == self._signature:
            return
        if signature is not None and _digest(self.path) == self._digest:
            self._signature = signature  # touched, not changed
            return
        await self.reload("file changed")
