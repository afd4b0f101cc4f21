"""The gateway as a real process (`python -m gateway serve`), for tests of signals, crashes
and several replicas."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent


def write_config(path: Path, raw: dict[str, Any] | str) -> None:
    """Replace the file whole, as editors and ConfigMaps do."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    os.replace(tmp, path)


def log_path(config_path: Path, port: int) -> Path:
    """Where the process started for `config_path` on `port` writes its log."""
    return config_path.parent / f"gateway-{port}.log"


async def start_gateway_process(
    config_path: Path, port: int, *, within_s: float = 10, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """Start `gateway serve` and wait until /healthz answers. Its log goes to a file
    (`log_path`): a pipe nobody reads would fill under load and block the gateway."""
    with log_path(config_path, port).open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config_path),
            "--port",
            str(port),
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=ROOT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        deadline = time.perf_counter() + within_s
        while time.perf_counter() < deadline:
            if process.returncode is not None:
                break
            try:
                async with http.get(url + "/healthz") as response:
                    if response.status == 200:
                        return process
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    process.kill()
    await process.wait()
    written = log_path(config_path, port).read_text()
    raise AssertionError(f"gateway did not start: {written[-2000:]}")


async def statuses_across_replicas(
    config_path: Path,
    body: dict[str, Any],
    headers: dict[str, str],
    requests: int,
    replicas: int = 3,
) -> list[int]:
    """`replicas` gateway processes on one config, `requests` chat requests sent at once,
    round-robin across them; each answer's status. The processes are stopped after."""
    from tests.conftest import free_port

    ports = [free_port() for _ in range(replicas)]
    processes = await asyncio.gather(*(start_gateway_process(config_path, p) for p in ports))
    try:
        async with aiohttp.ClientSession() as http:

            async def one(i: int) -> int:
                url = f"http://127.0.0.1:{ports[i % replicas]}/v1/chat/completions"
                async with http.post(url, json=body, headers=headers) as response:
                    await response.read()
                    return response.status

            return list(await asyncio.gather(*(one(i) for i in range(requests))))
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        await asyncio.gather(*(process.wait() for process in processes))
