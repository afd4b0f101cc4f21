"""limits_bench.py's findings: what admission under the memory and the Redis backend adds over
no limits, the Redis commands per request, and printing them."""

from __future__ import annotations

import math
from typing import Any

from _report import noise_warning, table

BACKENDS = ("memory", "redis")
# Commands a client sends itself; a Lua script cannot (or the gateway's scripts do not) run
# them. Everything else in commandstats ran inside a script (ZADD, ZREMRANGEBYSCORE, ...).
_CLIENT_COMMANDS = {"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro", "ping",
                    "hello", "auth", "select", "multi", "exec", "discard"}  # fmt: skip
_CLIENT_PREFIXES = ("script|", "client|", "config|")


def _client_command(name: str) -> bool:
    return name in _CLIENT_COMMANDS or name.startswith(_CLIENT_PREFIXES)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _ratio(numerator: float, denominator: float) -> float | None:
    if math.isnan(numerator) or math.isnan(denominator) or denominator <= 0:
        return None
    return numerator / denominator


def _cpu_us(summary: dict[str, Any], process: str) -> float:
    cpu = summary["cpu"].get(process)
    return float(cpu["us_per_request"]) if cpu else math.nan


def admission_cost(results: dict[str, Any]) -> dict[str, Any]:
    """Each backend against the gateway without limits ("none"), measured in the same rounds.
    `share_of_gateway_overhead`: the added p50 at c=1 as a share of what the gateway without
    limits itself adds over calling the upstream directly."""
    none = results["none"]
    own = _num(none["c1"]["p50_ms"]) - _num(results["direct"]["c1"]["p50_ms"])
    out: dict[str, Any] = {"gateway_without_limits_added_p50_c1_ms": own}
    for name in BACKENDS:
        r = results[name]
        c1_added = _num(r["c1"]["p50_ms"]) - _num(none["c1"]["p50_ms"])
        out[name] = {
            "c1_added_p50_ms": c1_added,
            "c1_added_p99_ms": _num(r["c1"]["p99_ms"]) - _num(none["c1"]["p99_ms"]),
            "c1_p50_ratio": _ratio(_num(r["c1"]["p50_ms"]), _num(none["c1"]["p50_ms"])),
            "c1_share_of_gateway_overhead": _ratio(c1_added, own) if c1_added > 0 else 0.0,
            "c1_rps_ratio": _ratio(_num(r["c1"]["rps"]), _num(none["c1"]["rps"])),
            "c64_added_p50_ms": _num(r["c64"]["p50_ms"]) - _num(none["c64"]["p50_ms"]),
            "c64_p50_ratio": _ratio(_num(r["c64"]["p50_ms"]), _num(none["c64"]["p50_ms"])),
            "c64_rps_ratio": _ratio(_num(r["c64"]["rps"]), _num(none["c64"]["rps"])),
            "c64_gateway_cpu_us_per_request": _cpu_us(r["c64"], "gateway"),
            "c64_gateway_cpu_ratio": _ratio(
                _cpu_us(r["c64"], "gateway"), _cpu_us(none["c64"], "gateway")
            ),
        }
    out["redis"]["c64_redis_server_cpu_us_per_request"] = _cpu_us(results["redis"]["c64"], "redis")
    return out


def _per_request(commands: dict[str, dict[str, int]], requests: int) -> dict[str, Any]:
    if requests <= 0:
        return {}
    client = {n: s["calls"] / requests for n, s in commands.items() if _client_command(n)}
    inside = sum(s["calls"] for n, s in commands.items() if not _client_command(n))
    evalsha = commands.get("evalsha", {"calls": 0, "usec": 0})
    return {
        "requests": requests,
        "evalsha_per_request": evalsha["calls"] / requests,
        "client_commands_per_request": sum(client.values()),
        "client_commands_by_name": client,
        "commands_inside_scripts_per_request": inside / requests,
        # Redis's own time running the scripts (commandstats usec of EVALSHA, which includes
        # the commands the script ran).
        "redis_script_usec_per_request": evalsha["usec"] / requests,
    }


def redis_round_trips(report: dict[str, Any]) -> dict[str, Any]:
    """Commands the Redis gateway sent per request, from INFO commandstats: inside each
    measured window (divided by the requests sent in it) and over the whole run (warm-ups
    included, so the lease keeper's renewals between windows are counted too)."""
    out: dict[str, Any] = {}
    for scenario, summary in report["results"]["redis"].items():
        sent = int(summary["requests"]) + int(summary["errors"])
        out[f"{scenario}_windows"] = _per_request(summary.get("redis_commands", {}), sent)
    whole = report["redis_whole_run"]
    out["whole_run"] = _per_request(whole["commands"], int(whole["requests_sent"]))
    return out


def analyse(report: dict[str, Any]) -> dict[str, Any]:
    return {
        "admission_cost": admission_cost(report["results"]),
        "redis_round_trips": redis_round_trips(report),
    }


# --- printing ------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _signed_ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.3f} ms"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}x"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _rps(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "-"
    rounds = summary["rps_rounds"]
    spread = f" ({min(rounds):.0f}-{max(rounds):.0f})" if len(rounds) > 1 else ""
    return f"{summary['rps']:.0f}{spread}"


_DESCRIPTION = {
    "direct": "upstream, no gateway",
    "none": "(a) plan without limits",
    "memory": "(b) limits, memory",
    "redis": "(c) limits, redis",
}


def raw_table(results: dict[str, Any], concurrency: int) -> str:
    c = f"c={concurrency}"
    header = ["target", "what", "c=1 p50", "c=1 p99", "c=1 rps", f"{c} p50", f"{c} p99",
              f"{c} rps (rounds)", f"gw us/req {c}", "errors"]  # fmt: skip
    rows = []
    for target, r in results.items():
        c1, c64 = r["c1"], r.get("c64")
        errors = sum(s["errors"] for s in r.values())
        rows.append([
            target, _DESCRIPTION.get(target, ""), _ms(c1["p50_ms"]), _ms(c1["p99_ms"]),
            f"{c1['rps']:.0f}", _ms(c64["p50_ms"]) if c64 else "-",
            _ms(c64["p99_ms"]) if c64 else "-", _rps(c64),
            f"{_cpu_us(c64, 'gateway'):.0f}" if c64 else "-", str(errors),
        ])  # fmt: skip
    return table("Raw numbers (latency in ms; gw us/req = gateway CPU per request)", header, rows)


def cost_table(cost: dict[str, Any], concurrency: int) -> str:
    c = f"c={concurrency}"
    m, r = cost["memory"], cost["redis"]
    rows = [
        ["added p50 at c=1, over (a)", _signed_ms(m["c1_added_p50_ms"]),
         _signed_ms(r["c1_added_p50_ms"])],
        ["p50 at c=1, / (a)", _x(m["c1_p50_ratio"]), _x(r["c1_p50_ratio"])],
        ["  share of (a)'s own overhead", _pct(m["c1_share_of_gateway_overhead"]),
         _pct(r["c1_share_of_gateway_overhead"])],
        ["added p99 at c=1, over (a)", _signed_ms(m["c1_added_p99_ms"]),
         _signed_ms(r["c1_added_p99_ms"])],
        ["requests/s at c=1, / (a)", _x(m["c1_rps_ratio"]), _x(r["c1_rps_ratio"])],
        [f"added p50 at {c}, over (a)", _signed_ms(m["c64_added_p50_ms"]),
         _signed_ms(r["c64_added_p50_ms"])],
        [f"p50 at {c}, / (a)", _x(m["c64_p50_ratio"]), _x(r["c64_p50_ratio"])],
        [f"requests/s at {c}, / (a)", _x(m["c64_rps_ratio"]), _x(r["c64_rps_ratio"])],
        [f"gateway CPU/request at {c}, / (a)", _x(m["c64_gateway_cpu_ratio"]),
         _x(r["c64_gateway_cpu_ratio"])],
        [f"redis-server CPU/request at {c}", "-",
         f"{r['c64_redis_server_cpu_us_per_request']:.0f} us"],
    ]  # fmt: skip
    own = cost["gateway_without_limits_added_p50_c1_ms"]
    title = (
        "Admission cost: (b) memory and (c) redis against (a) the same gateway without limits\n"
        f"((a)'s own overhead = p50(a) - p50(direct) at c=1 = {_ms(own)} ms; the share row is "
        "the added p50 as a part of it)"
    )
    return table(title, ["", "(b) memory", "(c) redis"], rows)


def round_trip_lines(
    trips: dict[str, Any], whole_run: dict[str, dict[str, int]], sample: dict[str, Any]
) -> list[str]:
    lines = ["Redis commands per request, gateway (c) (INFO commandstats)"]
    header = ["", "c=1 windows", "c=64 windows", "whole run"]
    columns = [trips.get("c1_windows", {}), trips.get("c64_windows", {}),
               trips.get("whole_run", {})]  # fmt: skip

    def row(label: str, key: str, fmt: str) -> list[str]:
        return [label, *(format(col[key], fmt) if key in col else "n/a" for col in columns)]

    rows = [
        row("requests", "requests", "d"),
        row("EVALSHA (script calls)", "evalsha_per_request", ".3f"),
        row("all client commands", "client_commands_per_request", ".3f"),
        row("commands run inside scripts", "commands_inside_scripts_per_request", ".1f"),
        row("Redis time in scripts (us)", "redis_script_usec_per_request", ".1f"),
    ]
    lines.append(table("", header, rows).lstrip("\n"))
    others = [
        f"{name} {stat['calls']}"
        for name, stat in whole_run.items()
        if _client_command(name) and name != "evalsha"
    ]
    if others:
        lines.append(f"Other client commands over the whole run, in all: {', '.join(others)}")
    if "skipped" in sample:
        lines.append(f"By script: MONITOR sample skipped ({sample['skipped']})")
        return lines
    lines.append(
        f"By script: MONITOR sample of {sample['requests']} sequential requests after the "
        f"rounds ({sample['top_level_total_per_request']:.3f} client commands per request, "
        f"{sample['inside_scripts_per_request']:.1f} run inside scripts)"
    )
    for name, per_request in sample["top_level_per_request"].items():
        lines.append(f"  {name:<28} {per_request:.3f} per request")
    return lines


def _errors(results: dict[str, Any]) -> list[str]:
    found = [
        f"  {target} {scenario}: {summary['errors']} errors, first: {summary['first_error']}"
        for target, by_scenario in results.items()
        for scenario, summary in by_scenario.items()
        if summary["errors"]
    ]
    return ["Measurements with errors:", *found] if found else []


def print_report(report: dict[str, Any]) -> None:
    env, results = report["environment"], report["results"]
    concurrency = env["plan"]["concurrency"]
    changes = " (+uncommitted changes in gateway/)" if env["gateway_uncommitted_changes"] else ""
    sections = [
        [f"{env['cpus']} CPUs, Python {env['python']}, aiohttp {env['aiohttp']}, "
         f"commit {env['git_commit']}{changes}, {env['elapsed_s']} s"],
        [raw_table(results, concurrency)],
        _errors(results),
        [cost_table(report["admission_cost"], concurrency)],
        round_trip_lines(
            report["redis_round_trips"],
            report["redis_whole_run"]["commands"],
            report["redis_monitor_sample"],
        ),
        noise_warning(results),
    ]  # fmt: skip
    for section in sections:
        if section:
            print()
            print("\n".join(section))
