"""What a seam costs a streaming client: the added time to the first continued token after an
upstream fails mid-stream (`routing.midstream: continue`).

    .venv/bin/python bench/midstream_bench.py [--requests N]

Starts the fake OpenAI upstream (tests/fakes) and a gateway in this process, with a chain of
two models on it and `timeout.idle` at IDLE_S. Each request picks a mid-stream fault (the fake
writes the story's first words 10 ms apart, then fails; the next model's continuation starts
at once, 10 ms apart again). For every request it measures the gap between the last token
before the seam and the first token after it, and the stream's other gaps between tokens (the
upstream's own pace); the difference is what the seam adds: noticing the failure (for a
stall, the idle timeout itself), opening the continuation and its first event. A latency
measurement of single streams, so a Python client is enough (the load benchmarks use wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from gateway.config import parse_config  # noqa: E402
from gateway.server.serving import GatewayServer  # noqa: E402
from tests.fakes.midstream import CUT_AFTER_WORDS  # noqa: E402
from tests.fakes.openai_upstream import FakeOpenAI  # noqa: E402

KEY = "gw-bench-midstream"
IDLE_S = 0.2
FAULTS = ("mid_reset", "mid_error", "mid_no_finish", "mid_stall")


def config(upstream_url: str) -> dict[str, Any]:
    timeout = {"connect": 2, "first_token": 5, "total": 30, "idle": IDLE_S}
    return {
        "server": {"host": "127.0.0.1", "port": 0, "log_level": "error"},
        "providers": {"up": {"type": "openai", "base_url": upstream_url}},
        "models": {
            "a": {"provider": "up", "model": "model-a", "timeout": timeout},
            "b": {"provider": "up", "model": "model-b", "timeout": timeout},
        },
        "tiers": {"fast": ["a", "b"]},
        "routing": {"retries": 0, "midstream": "continue"},
        "keys": [{"name": "bench", "key": KEY}],
    }


async def token_times(http: aiohttp.ClientSession, url: str, fault: str) -> list[float]:
    body = {
        "model": "fast",
        "stream": True,
        "messages": [{"role": "user", "content": f"Tell the story. fault:{fault}"}],
    }
    times: list[float] = []
    async with http.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}) as answer:
        async for line in answer.content:
            if line.startswith(b"data: {") and b'"content":"' in line:
                times.append(time.perf_counter())
    return times


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(requests: int) -> None:
    logging.disable(logging.WARNING)  # every seam logs its failed attempt: not for this table
    upstream = FakeOpenAI()
    await upstream.start()
    gateway_config = parse_config(yaml.safe_dump(config(upstream.url)), env={})
    server = GatewayServer(gateway_config, "127.0.0.1", 0)
    await server.start()
    url = server.url + "/v1/chat/completions"
    print(f"{requests} streams per fault; the upstream writes a token every 10 ms")
    print(f"{'fault':<16}{'pace p50':>10}{'seam p50':>10}{'seam p95':>10}{'added p50':>11}")
    try:
        async with aiohttp.ClientSession() as http:
            await token_times(http, url, "none")  # warm the pools
            for fault in FAULTS:
                seams: list[float] = []
                paces: list[float] = []
                for _ in range(requests):
                    times = await token_times(http, url, fault)
                    gaps = [b - a for a, b in itertools.pairwise(times)]
                    # times[0] is the role chunk (empty content), 1..CUT_AFTER_WORDS the words
                    # before the seam, then the continuation's.
                    seams.append(gaps[CUT_AFTER_WORDS])
                    paces += gaps[:CUT_AFTER_WORDS] + gaps[CUT_AFTER_WORDS + 1 :]
                pace = statistics.median(paces)
                print(
                    f"{fault:<16}{ms(paces, 0.5):>8.1f}ms{ms(seams, 0.5):>8.1f}ms"
                    f"{ms(seams, 0.95):>8.1f}ms{1000 * (statistics.median(seams) - pace):>9.1f}ms"
                )
    finally:
        await server.stop()
        await upstream.stop()
    print(f"(mid_stall includes its idle timeout, {IDLE_S * 1000:.0f} ms: the time to notice)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    asyncio.run(main(parser.parse_args().requests))
