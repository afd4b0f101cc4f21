"""From the load generator's raw rounds to the benchmark's findings: pooled percentiles and CPU,
the added cost of the relay and the gateway over direct calls, the gateway/relay ratios, and
the project's targets."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from collections.abc import Iterable
from typing import Any

import aiohttp
from _common import percentile
from _launch import PROJECT_DIR

# The project's targets. Misses are reported, never fatal: a benchmark is not a test.
MAX_ADDED_P50_C1_MS = 1.0
MIN_RPS_VS_RELAY = 0.7
MAX_IDLE_RSS_MB = 60.0
NOISY_OTHER_SHARE = 0.2  # of one core: above it, other work visibly moved the numbers


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool the rounds of one measurement: percentiles over every sample, requests per second
    over the summed wall time, and each watched process's CPU as a share of one core and per
    request (the cost of a request, whatever else was competing for the cores)."""
    ordered = sorted(x for r in rounds for x in r["latencies_ms"])
    streams = sorted(x for r in rounds for x in r["stream_ms"])
    done, elapsed = len(ordered), sum(r["elapsed_s"] for r in rounds)
    summary: dict[str, Any] = {
        "requests": done,
        "errors": sum(r["errors"] for r in rounds),
        "first_error": next((r["first_error"] for r in rounds if r["first_error"]), None),
        "elapsed_s": round(elapsed, 3),
        "rps": done / elapsed if elapsed > 0 else 0.0,
        "rps_rounds": [len(r["latencies_ms"]) / r["elapsed_s"] for r in rounds if r["elapsed_s"]],
        "p50_ms": percentile(ordered, 0.50),
        "p99_ms": percentile(ordered, 0.99),
        "mean_ms": sum(ordered) / done if done else math.nan,
    }
    if streams:
        summary["stream_p50_ms"] = percentile(streams, 0.50)
    summary["sent"] = sum(r.get("sent", 0) for r in rounds)  # warm-ups included
    if any("redis_commands" in r for r in rounds):
        summary["redis_commands"] = merge_commands(r.get("redis_commands", {}) for r in rounds)
    used = {name: sum(r["cpu_s"].get(name, 0.0) for r in rounds) for name in rounds[0]["cpu_s"]}
    if "machine" in used:
        # Whatever the machine did beyond the benchmark's own processes: other people's work.
        used["other"] = max(0.0, used.pop("machine") - sum(used.values()))
    summary["cpu"] = {
        name: {"core_share": seconds / elapsed, "us_per_request": seconds / done * 1e6}
        for name, seconds in used.items()
        if done and elapsed > 0
    }
    return summary


def merge_commands(deltas: Iterable[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Redis commandstats deltas added up: {command: {"calls": n, "usec": n}}."""
    total: dict[str, dict[str, int]] = {}
    for delta in deltas:
        for name, stat in delta.items():
            into = total.setdefault(name, {"calls": 0, "usec": 0})
            into["calls"] += stat["calls"]
            into["usec"] += stat["usec"]
    return dict(sorted(total.items(), key=lambda item: -item[1]["calls"]))


def _get(results: dict[str, Any], target: str, scenario: str, key: str) -> float:
    value = results[target][scenario].get(key)
    return float(value) if isinstance(value, int | float) else math.nan


def added_latency(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Target minus direct, in ms, for every latency the benchmark takes."""
    columns = {
        "c1_p50_ms": ("c1", "p50_ms"),
        "c1_p99_ms": ("c1", "p99_ms"),
        "c64_p50_ms": ("c64", "p50_ms"),
        "c64_p99_ms": ("c64", "p99_ms"),
        "ttft_p50_ms": ("ttft", "p50_ms"),
    }
    return {
        target: {
            name: _get(results, target, scenario, key) - _get(results, "direct", scenario, key)
            for name, (scenario, key) in columns.items()
        }
        for target in ("relay", "gateway")
    }


def _ratio(numerator: float, denominator: float) -> float | None:
    """None when the ratio means nothing: a denominator at or below zero (the relay measured as
    adding nothing, which is noise) or a missing number."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator <= 0:
        return None
    return numerator / denominator


def ratios(results: dict[str, Any], added: dict[str, dict[str, float]]) -> dict[str, float | None]:
    return {
        "added_p50_c1_gateway_over_relay": _ratio(
            added["gateway"]["c1_p50_ms"], added["relay"]["c1_p50_ms"]
        ),
        "rps_c64_gateway_over_relay": _ratio(
            _get(results, "gateway", "c64", "rps"), _get(results, "relay", "c64", "rps")
        ),
        "added_ttft_p50_gateway_over_relay": _ratio(
            added["gateway"]["ttft_p50_ms"], added["relay"]["ttft_p50_ms"]
        ),
        # Throughput on a shared 2-core box also depends on how the cores are split between the
        # load generator, the upstream and the relay; CPU per request does not.
        "cpu_per_request_c64_gateway_over_relay": _ratio(
            cpu_per_request(results["gateway"]["c64"], "gateway"),
            cpu_per_request(results["relay"]["c64"], "relay"),
        ),
    }


def cpu_per_request(summary: dict[str, Any], process: str) -> float:
    cpu = summary["cpu"].get(process)
    return float(cpu["us_per_request"]) if cpu else math.nan


def targets(
    added: dict[str, dict[str, float]], rates: dict[str, float | None], memory: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    rss_kb = memory["gateway_idle"]["rss_kb"]
    idle_mb = rss_kb / 1024 if rss_kb is not None else math.nan
    rps_ratio = rates["rps_c64_gateway_over_relay"]
    checks = {
        "gateway added p50 latency at c=1": (
            added["gateway"]["c1_p50_ms"],
            f"< {MAX_ADDED_P50_C1_MS:g} ms",
            added["gateway"]["c1_p50_ms"] < MAX_ADDED_P50_C1_MS,
        ),
        "gateway throughput vs bare relay (c=64)": (
            rps_ratio,
            f">= {MIN_RPS_VS_RELAY:g}x",
            rps_ratio is not None and rps_ratio >= MIN_RPS_VS_RELAY,
        ),
        "gateway idle RSS": (idle_mb, f"< {MAX_IDLE_RSS_MB:g} MB", idle_mb < MAX_IDLE_RSS_MB),
    }
    return {
        name: {"value": value, "target": goal, "pass": ok}
        for name, (value, goal, ok) in checks.items()
    }


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def environment(plan: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    """What a reader needs to compare two result files: the machine, versions and the code."""
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "loadavg_1m_at_end": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "gateway_uncommitted_changes": bool(_git("status", "--porcelain", "gateway")),
        "plan": plan,
        "elapsed_s": round(elapsed_s, 1),
    }


def build_report(
    measured: dict[str, Any], plan: dict[str, Any], elapsed_s: float
) -> dict[str, Any]:
    """Everything the benchmark found, as it is printed and written to the results JSON."""
    results = measured["results"]
    added = added_latency(results)
    rates = ratios(results, added)
    return {
        "environment": environment(plan, elapsed_s),
        "results": results,
        "added_over_direct_ms": added,
        "ratios": rates,
        "memory_kb": measured["memory"],
        "targets": targets(added, rates, measured["memory"]),
        "max_other_cpu_core_share": disturbance(results),
    }


def disturbance(results: dict[str, Any]) -> float:
    """The largest share of a core other processes used during any measurement."""
    shares = [
        summary["cpu"]["other"]["core_share"]
        for by_scenario in results.values()
        for summary in by_scenario.values()
        if "other" in summary["cpu"]
    ]
    return max(shares, default=0.0)
