"""What an admission costs on each `redis.mode`: the Redis limiter alone, in this process,
against a private standalone server, a three-master Cluster and a Sentinel-managed primary
(all on 127.0.0.1, started here with the tests' helpers, never the machine's own Redis).

    .venv/bin/python bench/redis_modes_bench.py [--requests N]

For each mode: admit + settle one after another (the latency a request pays at c=1), then 64
callers at once (calls per second through the batcher, and this process's CPU per admission).
A plan with rpm, tpm and max_concurrent; once with a key budget only, once with a feature and
a total budget too (on a Cluster those live in another slot: a second script call).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config_redis import RedisConfig
from gateway.limits.base import LimitSpec
from gateway.limits.budgets import BudgetCharge
from gateway.limits.redis import RedisLimiter
from gateway.store.redis import SharedRedis
from tests.redis_cluster import RedisClusterNodes, RedisSentinelSetup
from tests.redis_server import RedisServer

SPEC = LimitSpec(rpm=10_000_000, tpm=10_000_000_000, max_concurrent=100_000)
KEY_ONLY = (BudgetCharge("key", "bench", 10**18, "day"),)
SHARED_TOO = (
    *KEY_ONLY,
    BudgetCharge("feature", "chat", 10**18, "day"),
    BudgetCharge("total", "total", 10**18, "day"),
)


async def measure(config: RedisConfig, requests: int) -> dict[str, float]:
    shared = SharedRedis(config)
    limiter = RedisLimiter(shared.client, cluster=shared.cluster)
    out: dict[str, float] = {}
    try:
        for label, budgets in (("key budget", KEY_ONLY), ("+feature/total", SHARED_TOO)):
            await limiter.admit("key:bench", SPEC, 10, budgets, 1000)  # scripts, connections
            started = time.perf_counter()
            for _ in range(requests):
                admission = await limiter.admit("key:bench", SPEC, 10, budgets, 1000)
                limiter.settle_nowait("key:bench", admission, 5, 500)
            out[f"c=1 us/request ({label})"] = (time.perf_counter() - started) / requests * 1e6

            async def caller(n: int, budgets: tuple[BudgetCharge, ...] = budgets) -> None:
                for _ in range(n):
                    admission = await limiter.admit("key:bench", SPEC, 10, budgets, 1000)
                    limiter.settle_nowait("key:bench", admission, 5, 500)

            cpu, started = time.process_time(), time.perf_counter()
            await asyncio.gather(*(caller(requests // 64) for _ in range(64)))
            await limiter._batcher.wait_idle()
            wall = time.perf_counter() - started
            done = requests // 64 * 64
            out[f"c=64 requests/s ({label})"] = done / wall
            out[f"c=64 client CPU us/request ({label})"] = (time.process_time() - cpu) / done * 1e6
    finally:
        await limiter.aclose()
        await shared.aclose()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3200)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - installed with the gateway
        pass
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        standalone = RedisServer(root / "standalone")
        (root / "standalone").mkdir()
        cluster = RedisClusterNodes(root / "cluster")
        sentinel = RedisSentinelSetup(root / "sentinel", sentinels=1)
        try:
            standalone.start()
            cluster.start()
            sentinel.start()
            configs = {
                "standalone": RedisConfig(url=standalone.url),
                "cluster": RedisConfig.model_validate(
                    {"url": cluster.url, "mode": "cluster", "cluster": {"nodes": cluster.seeds}}
                ),
                "sentinel": RedisConfig.model_validate(
                    {
                        "mode": "sentinel",
                        "sentinel": {"master": sentinel.master_name, "nodes": sentinel.nodes},
                    }
                ),
            }
            for mode, config in configs.items():
                results[mode] = asyncio.run(measure(config, args.requests))
        finally:
            standalone.kill()
            cluster.stop()
            sentinel.stop()
    rows = list(next(iter(results.values())))
    print(f"{'':44}" + "".join(f"{mode:>12}" for mode in results))
    for row in rows:
        print(f"{row:44}" + "".join(f"{results[mode][row]:12.0f}" for mode in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
