"""The gateway against a bare aiohttp relay and against calling the upstream directly.

    .venv/bin/python bench/relay_bench.py [--quick] [--out PATH]

Starts a fast fake OpenAI upstream, a bare relay in front of it and the gateway in front of it,
each in its own process, then measures the three targets in turns with the same load generator
(also its own process): non-streaming latency at concurrency 1, throughput and latency at
concurrency 64, and streaming time to first event at concurrency 1. Prints the raw numbers,
what the relay and the gateway add over direct calls, the gateway/relay ratios, the gateway's
memory, and the project's targets as PASS/MISS. Writes everything to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _analysis import build_report
from _common import HOST, free_port
from _harness import (
    GATEWAY_CONFIG,
    Target,
    check_config,
    measure_rounds,
    memory_kb,
    pooled,
    run_in_tempdir,
    start_gateway,
    stop_on_sigterm,
    write_results,
)
from _launch import BENCH_DIR, Children
from _report import print_report

TARGETS = ("direct", "relay", "gateway")


@dataclass(frozen=True)
class Plan:
    """How much load each measurement gets. Every measurement is split into rounds that take
    turns between the targets (direct, relay, gateway, direct, ...), and the rounds are pooled:
    a shared VM's speed drifts by tens of percent over a minute, and taking turns spreads that
    drift over all targets instead of charging it to whichever ran last."""

    rounds: int = 3
    c1_requests: int = 700  # per round
    c1_warmup: int = 100
    ttft_requests: int = 350
    ttft_warmup: int = 50
    concurrency: int = 64
    c64_seconds: float = 3.0
    c64_warmup_s: float = 0.5


QUICK = Plan(1, 300, 50, 200, 20, 64, 2.0, 0.5)


def write_gateway_config(directory: Path, upstream_port: int) -> Path:
    """A config whose only provider is the fake upstream; no keys, so auth is off."""
    path = directory / "gateway.yaml"
    path.write_text(GATEWAY_CONFIG.format(host=HOST, upstream_port=upstream_port))
    check_config(path)
    return path


def scenarios(plan: Plan) -> dict[str, dict[str, Any]]:
    """The load-generator spec of each measurement, by the name results are filed under."""
    return {
        "c1": {"mode": "latency", "requests": plan.c1_requests, "warmup": plan.c1_warmup},
        "ttft": {"mode": "ttft", "requests": plan.ttft_requests, "warmup": plan.ttft_warmup},
        "c64": {
            "mode": "throughput",
            "concurrency": plan.concurrency,
            "duration_s": plan.c64_seconds,
            "warmup_s": plan.c64_warmup_s,
        },
    }


def measure_all(targets: tuple[Target, ...], plan: Plan) -> dict[str, dict[str, Any]]:
    """Every measurement against every target, in rounds that take turns; the rounds pooled."""
    return pooled(measure_rounds(targets, scenarios(plan), plan.rounds))


def run_bench(plan: Plan, workdir: Path) -> dict[str, Any]:
    """Start the servers, measure every target, stop the servers (also on any error)."""
    python = sys.executable
    servers = str(BENCH_DIR / "_servers.py")
    up_port, relay_port, gw_port = free_port(), free_port(), free_port()
    with Children() as children:
        upstream = children.start(
            "upstream",
            [python, servers, "upstream", "--port", str(up_port)],
            log=workdir / "upstream.stderr",
        )
        children.wait_ready(upstream, up_port)
        relay = children.start(
            "relay",
            [python, servers, "relay", "--port", str(relay_port), "--upstream-port", str(up_port)],
            log=workdir / "relay.stderr",
        )
        children.wait_ready(relay, relay_port)
        config = write_gateway_config(workdir, up_port)
        gateway = start_gateway(children, "gateway", config, gw_port, workdir)
        time.sleep(0.5)  # let start-up allocations settle before calling it "idle"
        memory = {"gateway_idle": memory_kb(gateway.pid), "relay_idle": memory_kb(relay.pid)}

        up = {"upstream": upstream.pid}
        targets = (
            Target("direct", up_port, "bench-model", up),
            Target("relay", relay_port, "bench-model", {**up, "relay": relay.pid}),
            Target("gateway", gw_port, "fast", {**up, "gateway": gateway.pid}),
        )
        print(f"measuring {', '.join(TARGETS)}, taking turns:", flush=True)
        results = measure_all(targets, plan)
        children.check_alive()  # a server that died mid-run makes every later number wrong
        memory["gateway_after"] = memory_kb(gateway.pid)
        memory["relay_after"] = memory_kb(relay.pid)
    return {"results": results, "memory": memory}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (numbers noisy)")
    parser.add_argument(
        "--out", type=Path, default=BENCH_DIR / "results" / "latest.json", help="results JSON"
    )
    args = parser.parse_args()
    stop_on_sigterm()
    plan = QUICK if args.quick else Plan()
    started = time.monotonic()
    measured = run_in_tempdir("relay-bench-", lambda workdir: run_bench(plan, workdir))
    report = build_report(measured, asdict(plan), time.monotonic() - started)
    print_report(report)
    write_results(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
