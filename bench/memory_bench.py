"""Does the gateway's memory go back after a peak of streams?

    .venv/bin/python bench/memory_bench.py [--quick] [--concurrency N] [--out PATH]

Starts the bench upstream with its stream events spaced (`--pace-ms`, so that streams stay
open as real ones do) and, one after the other, two gateways in front of it: one as shipped
(`server.trim_memory: true`) and one with trimming off. For each: its idle RSS after a small
warm-up and a quiet spell, then `wrk` holding `--concurrency` streams open for `--seconds`
(every stream a real SSE relay with usage read from its last event), then its RSS 5, 15, 30 and
60 seconds after the last stream ended. Prints each as a ratio to idle, and whether RSS came
back within 30% of idle within a minute (the target). Writes bench/results/memory.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import HOST, free_port, proc_status_kb
from _harness import (
    GATEWAY_CONFIG,
    check_config,
    run_in_tempdir,
    start_gateway,
    stop_on_sigterm,
    write_results,
)
from _launch import BENCH_DIR, BenchFailed, Children
from _wrk import ensure_wrk, run_wrk, write_script

TARGET_RATIO = 1.3  # within 30% of idle
SAMPLES_S = (5, 15, 30, 60)  # after the peak ends
STREAM_BODY = {
    "model": "fast",
    "stream": True,
    "messages": [{"role": "user", "content": "Hello"}],
}


@dataclass(frozen=True)
class Plan:
    concurrency: int = 2000
    seconds: float = 15.0
    pace_ms: float = 50.0
    quiet_s: float = 12.0  # after warm-up: longer than the trimmer's two 5 s checks


QUICK = Plan(concurrency=500, seconds=5.0, pace_ms=50.0, quiet_s=12.0)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    kb = proc_status_kb(pid, field)
    if kb is None:
        raise BenchFailed(f"cannot read {field} of process {pid}")
    return kb / 1024


def measure(
    children: Children, workdir: Path, upstream_port: int, plan: Plan, trim: bool
) -> dict[str, Any]:
    name = "gateway-trim" if trim else "gateway-no-trim"
    config = workdir / f"{name}.yaml"
    # The benchmarks' gateway, with room for every stream (no concurrency cap, no per-address
    # cap on incomplete connections: wrk opens them all at once) and trimming on or off.
    server_line = (
        "shutdown_grace_s: 1, max_concurrent: 1000000, max_pending_per_address: 0, "
        f"trim_memory: {'true' if trim else 'false'}}}"
    )
    text = GATEWAY_CONFIG.format(host=HOST, upstream_port=upstream_port)
    config.write_text(text.replace("shutdown_grace_s: 1}", server_line, 1))
    check_config(config)
    port = free_port()
    gateway = start_gateway(children, name, config, port, workdir)
    url = f"http://{HOST}:{port}/v1/chat/completions"
    script = write_script(workdir / "stream.lua", STREAM_BODY)

    run_wrk(url, script, connections=10, duration_s=2)  # warm-up: imports, pools, caches
    time.sleep(plan.quiet_s)
    idle = rss_mb(gateway.pid)
    print(f"  {name}: idle {idle:.0f} MB; {plan.concurrency} streams open for {plan.seconds:g}s")
    peak_run = run_wrk(url, script, connections=plan.concurrency, duration_s=plan.seconds)
    ended = time.monotonic()
    peak = rss_mb(gateway.pid, "VmHWM")
    after: dict[str, float] = {}
    for at in SAMPLES_S:
        time.sleep(max(0.0, ended + at - time.monotonic()))
        children.check_alive()
        after[str(at)] = rss_mb(gateway.pid)
    children.stop(gateway)
    result = {
        "trim_memory": trim,
        "idle_mb": idle,
        "peak_mb": peak,
        "after_mb": after,
        "streams": peak_run["requests"],
        "errors": peak_run["errors"],
        "timeouts": peak_run["timeouts"],
        "streams_per_s": peak_run["requests"] / (peak_run["duration_us"] / 1e6),
    }
    back = [at for at in SAMPLES_S if after[str(at)] <= idle * TARGET_RATIO]
    result["back_within_s"] = back[0] if back else None
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    head = "| | idle | peak | " + " | ".join(f"after {at} s" for at in SAMPLES_S) + " |"
    print(head)
    print("|---" * (3 + len(SAMPLES_S)) + "|")
    for r in results:
        idle = r["idle_mb"]
        cells = [
            f"{r['after_mb'][str(at)]:.0f} MB ({r['after_mb'][str(at)] / idle:.2f}x)"
            for at in SAMPLES_S
        ]
        label = "trim_memory: true" if r["trim_memory"] else "trim_memory: false"
        print(f"| {label} | {idle:.0f} MB | {r['peak_mb']:.0f} MB | " + " | ".join(cells) + " |")
    for r in results:
        label = "trim on " if r["trim_memory"] else "trim off"
        print(
            f"{label}: {r['streams']} streams ({r['streams_per_s']:.0f}/s), "
            f"{r['errors']} errors, {r['timeouts']} timeouts"
        )
    shipped = next(r for r in results if r["trim_memory"])
    verdict = "PASS" if shipped["back_within_s"] is not None else "MISS"
    within = shipped["back_within_s"]
    print(
        f"target: RSS within {TARGET_RATIO:.1f}x of idle within 60 s after the peak: {verdict}"
        + (f" (after {within} s)" if within is not None else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 streams for 5 s")
    parser.add_argument("--concurrency", type=int, help="streams held open at once")
    parser.add_argument("--seconds", type=float, help="how long they are held")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "memory.json")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    if args.concurrency or args.seconds:
        plan = Plan(
            args.concurrency or plan.concurrency,
            args.seconds or plan.seconds,
            plan.pace_ms,
            plan.quiet_s,
        )
    stop_on_sigterm()
    ensure_wrk()

    def run(workdir: Path) -> list[dict[str, Any]]:
        with Children() as children:
            upstream_port = free_port()
            upstream = children.start(
                "upstream",
                [
                    sys.executable,
                    str(BENCH_DIR / "_servers.py"),
                    "upstream",
                    "--port",
                    str(upstream_port),
                    "--pace-ms",
                    str(plan.pace_ms),
                ],
                log=workdir / "upstream.stderr",
            )
            children.wait_ready(upstream, upstream_port)
            return [measure(children, workdir, upstream_port, plan, trim) for trim in (True, False)]

    results = run_in_tempdir("gateway-memory-bench-", run)
    print_table(results)
    write_results(
        args.out,
        {"plan": plan.__dict__, "results": results, "date": time.strftime("%Y-%m-%d")},
    )


if __name__ == "__main__":
    main()
