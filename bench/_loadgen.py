"""The load generator, one process per measurement, so it never shares an event loop (or a
CPU-bound interpreter) with the server it measures:

    python bench/_loadgen.py '<json spec>'

It prints one JSON object on stdout: the raw latencies, wall time and CPU used. Spec fields:
  url, model            where to send chat completions, and the `model` to ask for
  mode                  "latency" (sequential), "throughput" (N workers), "ttft" (streams)
  requests, warmup      latency/ttft: measured requests, and unmeasured ones before them
  concurrency           throughput: workers, each with its own keep-alive connection
  duration_s, warmup_s  throughput: measured window, and an unmeasured one before it
  watch_pids            {name: pid}: processes whose CPU use over the measured window is reported
  headers               optional {name: value} sent with every request (e.g. Authorization)
  redis_port            optional: a Redis whose INFO commandstats are read as the measured
                        window opens and closes; what ran in between is reported
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from _common import (
    commandstats_delta,
    cpu_seconds,
    machine_busy_seconds,
    redis_commandstats,
    run,
)

HEADERS = {"Content-Type": "application/json"}
Sender = Callable[[aiohttp.ClientSession], Awaitable[float | None]]


@dataclass
class Samples:
    """Latencies in seconds of the successful requests, and what went wrong with the others."""

    latencies: list[float] = field(default_factory=list)
    extra: list[float] = field(default_factory=list)  # ttft mode: whole-stream times
    errors: int = 0
    first_error: str | None = None
    sent: int = 0  # every request sent, warm-ups included; never reset

    def fail(self, why: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or why


def request_body(model: str, stream: bool) -> bytes:
    """A small, typical chat request: what an app's one-line question looks like."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in five words."},
        ],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def chat_sender(url: str, model: str, samples: Samples, headers: dict[str, str]) -> Sender:
    """One non-streaming request: latency from send to the whole body read."""
    body = request_body(model, stream=False)

    async def send(session: aiohttp.ClientSession) -> float | None:
        samples.sent += 1
        started = time.perf_counter()
        try:
            async with session.post(url, data=body, headers=headers) as response:
                data = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError) as exc:
            samples.fail(f"{type(exc).__name__}: {exc}")
            return None
        elapsed = time.perf_counter() - started
        if status != 200 or b'"chat.completion"' not in data:
            samples.fail(f"HTTP {status}: {data[:200]!r}")
            return None
        return elapsed

    return send


def stream_sender(url: str, model: str, samples: Samples, headers: dict[str, str]) -> Sender:
    """One streaming request: time to the first byte of the first `data:` event (TTFT); the
    whole stream's time goes to `samples.extra`."""
    body = request_body(model, stream=True)

    async def send(session: aiohttp.ClientSession) -> float | None:
        samples.sent += 1
        started = time.perf_counter()
        first: float | None = None
        received = b""
        try:
            async with session.post(url, data=body, headers=headers) as response:
                status = response.status
                async for chunk in response.content.iter_any():
                    received += chunk
                    # Keep-alive comments may come first; only an event's data counts.
                    if first is None and b"data:" in received:
                        first = time.perf_counter() - started
        except (aiohttp.ClientError, OSError) as exc:
            samples.fail(f"{type(exc).__name__}: {exc}")
            return None
        total = time.perf_counter() - started
        if status != 200 or first is None or not received.endswith(b"data: [DONE]\n\n"):
            samples.fail(f"HTTP {status}: {received[:200]!r}")
            return None
        samples.extra.append(total)
        return first

    return send


class Window:
    """The measured part of a run: its wall time and the CPU the watched processes used in it.
    Warm-ups happen before `open()`, so neither their time nor their CPU is counted."""

    def __init__(self, pids: dict[str, int], redis_port: int | None = None) -> None:
        self.pids = pids
        self.redis_port = redis_port
        self.started = self.ended = 0.0
        self.cpu_before: dict[str, float | None] = {}
        self.cpu_after: dict[str, float | None] = {}
        self.redis_before: dict[str, dict[str, int]] = {}
        self.redis_after: dict[str, dict[str, int]] = {}

    def _cpu(self) -> dict[str, float | None]:
        snapshot = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        snapshot["loadgen"] = cpu_seconds(os.getpid())
        snapshot["machine"] = machine_busy_seconds()
        return snapshot

    def open(self) -> None:
        # Blocking, but nothing is in flight here: the warm-up has ended, the window not begun.
        if self.redis_port is not None:
            self.redis_before = redis_commandstats(self.redis_port)
        self.cpu_before = self._cpu()
        self.started = time.perf_counter()

    def close(self) -> None:
        self.ended = time.perf_counter()
        self.cpu_after = self._cpu()
        if self.redis_port is not None:
            self.redis_after = redis_commandstats(self.redis_port)

    @property
    def elapsed(self) -> float:
        return self.ended - self.started


async def sequential(
    send: Sender, warmup: int, requests: int, samples: Samples, window: Window
) -> None:
    """Concurrency 1: one connection, one request after the other."""
    async with new_session(1) as session:
        for _ in range(warmup):
            await send(session)
        samples.errors, samples.first_error, samples.extra[:] = 0, None, []
        window.open()
        for _ in range(requests):
            latency = await send(session)
            if latency is not None:
                samples.latencies.append(latency)
        window.close()


async def workers(
    send: Sender,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    samples: Samples,
    window: Window,
) -> None:
    """`concurrency` workers, each sending back to back until the window closes. The warm-up
    opens every connection first, so connects are not counted. The window lasts until the last
    request in flight has finished, so every counted request falls inside it."""

    async def worker(session: aiohttp.ClientSession, until: float, record: bool) -> None:
        while time.perf_counter() < until:
            latency = await send(session)
            if record and latency is not None:
                samples.latencies.append(latency)

    async with new_session(concurrency) as session:
        until = time.perf_counter() + warmup_s
        await asyncio.gather(*(worker(session, until, False) for _ in range(concurrency)))
        samples.errors, samples.first_error = 0, None
        window.open()
        until = window.started + duration_s
        await asyncio.gather(*(worker(session, until, True) for _ in range(concurrency)))
        window.close()


def new_session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


def raw_result(samples: Samples, window: Window) -> dict[str, Any]:
    """What happened in the window, unsummarized, so that the benchmark can pool several
    rounds: latencies in ms, wall time, and CPU seconds each watched process used."""
    cpu: dict[str, float] = {}
    for name, before in window.cpu_before.items():
        after = window.cpu_after.get(name)
        if before is not None and after is not None:
            cpu[name] = after - before
    result: dict[str, Any] = {
        "latencies_ms": [round(x * 1000, 4) for x in samples.latencies],
        "stream_ms": [round(x * 1000, 4) for x in samples.extra],
        "errors": samples.errors,
        "first_error": samples.first_error,
        "sent": samples.sent,
        "elapsed_s": window.elapsed,
        "cpu_s": cpu,
    }
    if window.redis_port is not None:
        result["redis_commands"] = commandstats_delta(window.redis_before, window.redis_after)
    return result


async def measure(spec: dict[str, Any]) -> dict[str, Any]:
    samples = Samples()
    window = Window(spec.get("watch_pids") or {}, spec.get("redis_port"))
    mode = spec["mode"]
    make = stream_sender if mode == "ttft" else chat_sender
    headers = {**HEADERS, **(spec.get("headers") or {})}
    send = make(spec["url"], spec["model"], samples, headers)
    if mode == "throughput":
        await workers(
            send, spec["concurrency"], spec["warmup_s"], spec["duration_s"], samples, window
        )
    else:
        await sequential(send, spec["warmup"], spec["requests"], samples, window)
    return raw_result(samples, window)


def main() -> None:
    spec = orjson.loads(sys.argv[1])
    result = run(measure(spec))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
