"""Printing the benchmark's findings as plain text tables."""

from __future__ import annotations

import math
from typing import Any

from _analysis import NOISY_OTHER_SHARE, cpu_per_request, disturbance

Row = list[str]


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _rps(summary: dict[str, Any]) -> str:
    """Pooled requests per second, with the slowest and fastest round when there were several:
    how far apart they are says how much to trust a ratio."""
    rounds = summary["rps_rounds"]
    spread = f" ({min(rounds):.0f}-{max(rounds):.0f})" if len(rounds) > 1 else ""
    return f"{summary['rps']:.0f}{spread}"


def _mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f} MB"


def table(title: str, header: Row, rows: list[Row]) -> str:
    """A plain text table: first column left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Row) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells)

    rule = "-" * len(line(header))
    return "\n".join([title, rule, line(header), rule, *map(line, rows), rule])


def raw_table(results: dict[str, Any], concurrency: int) -> str:
    header = ["target", "c=1 p50", "c=1 p99", "c=1 rps",
              f"c={concurrency} p50", f"c={concurrency} p99", f"c={concurrency} rps (rounds)",
              "TTFT p50", "TTFT p99", "stream p50", "errors"]  # fmt: skip
    rows = []
    for target, r in results.items():
        errors = sum(r[s]["errors"] for s in ("c1", "c64", "ttft"))
        rows.append([
            target, _ms(r["c1"]["p50_ms"]), _ms(r["c1"]["p99_ms"]), f"{r['c1']['rps']:.0f}",
            _ms(r["c64"]["p50_ms"]), _ms(r["c64"]["p99_ms"]), _rps(r["c64"]),
            _ms(r["ttft"]["p50_ms"]), _ms(r["ttft"]["p99_ms"]),
            _ms(r["ttft"].get("stream_p50_ms", math.nan)), str(errors),
        ])  # fmt: skip
    return table("Raw numbers (latency in ms; TTFT = first data event of a stream, c=1)",
                 header, rows)  # fmt: skip


def added_table(added: dict[str, dict[str, float]], concurrency: int) -> str:
    header = ["target", "c=1 p50", "c=1 p99", f"c={concurrency} p50", f"c={concurrency} p99",
              "TTFT p50"]  # fmt: skip
    keys = ("c1_p50_ms", "c1_p99_ms", "c64_p50_ms", "c64_p99_ms", "ttft_p50_ms")
    rows = [[target, *(_ms(a[k]) for k in keys)] for target, a in added.items()]
    return table("Added latency over direct (target - direct, ms)", header, rows)


_NOT_MIDDLE = ("loadgen", "upstream", "other")


def _share(cpu: dict[str, Any], name: str | None) -> str:
    return f"{cpu[name]['core_share']:.0%}" if name and name in cpu else "-"


def _per_request(cpu: dict[str, Any], name: str | None) -> str:
    return f"{cpu[name]['us_per_request']:.0f}" if name and name in cpu else "-"


def cpu_table(results: dict[str, Any], concurrency: int) -> str:
    """Who was busy. On a small machine the load generator, the upstream and the middle process
    share the cores, so throughput can be capped by any of them; CPU per request is the number
    that does not depend on that contention. "other" is CPU used by processes outside the
    benchmark while it measured."""
    c = f"c={concurrency}"
    header = ["target", f"loadgen {c}", f"upstream {c}", f"middle {c}", f"other {c}",
              "other c=1", "middle us/req c=1", f"middle us/req {c}"]  # fmt: skip
    rows = []
    for target, r in results.items():
        c64, c1 = r["c64"]["cpu"], r["c1"]["cpu"]
        middle = next((name for name in c64 if name not in _NOT_MIDDLE), None)
        rows.append([target, _share(c64, "loadgen"), _share(c64, "upstream"),
                     _share(c64, middle), _share(c64, "other"), _share(c1, "other"),
                     _per_request(c1, middle), _per_request(c64, middle)])  # fmt: skip
    title = "CPU: share of one core, and per request (from /proc, 10 ms tick resolution)"
    return table(title, header, rows)


def _heading(env: dict[str, Any]) -> str:
    changes = " (+uncommitted changes in gateway/)" if env["gateway_uncommitted_changes"] else ""
    return (
        f"{env['cpus']} CPUs, Python {env['python']}, aiohttp {env['aiohttp']}, "
        f"commit {env['git_commit']}{changes}, {env['elapsed_s']} s"
    )


def _errors(results: dict[str, Any]) -> list[str]:
    """The first failure of every measurement that had any: numbers with errors mislead."""
    return [
        f"  {target} {scenario}: {summary['errors']} errors, first: {summary['first_error']}"
        for target, by_scenario in results.items()
        for scenario, summary in by_scenario.items()
        if summary["errors"]
    ]


def _versus_relay(report: dict[str, Any], concurrency: int) -> list[str]:
    rates, added, results = report["ratios"], report["added_over_direct_ms"], report["results"]
    gw, relay = added["gateway"], added["relay"]
    rps = (results["gateway"]["c64"]["rps"], results["relay"]["c64"]["rps"])
    cpu = (
        cpu_per_request(results["gateway"]["c64"], "gateway"),
        cpu_per_request(results["relay"]["c64"], "relay"),
    )
    c = f"c={concurrency}"
    return [
        "Gateway / bare relay",
        f"  added p50 latency at c=1   {_x(rates['added_p50_c1_gateway_over_relay']):>6}"
        f"  ({_ms(gw['c1_p50_ms'])} ms vs {_ms(relay['c1_p50_ms'])} ms)",
        f"  throughput at {c:<12} {_x(rates['rps_c64_gateway_over_relay']):>6}"
        f"  ({rps[0]:.0f} vs {rps[1]:.0f} rps)",
        f"  added TTFT p50 at c=1      {_x(rates['added_ttft_p50_gateway_over_relay']):>6}"
        f"  ({_ms(gw['ttft_p50_ms'])} ms vs {_ms(relay['ttft_p50_ms'])} ms)",
        f"  CPU per request at {c:<7} {_x(rates['cpu_per_request_c64_gateway_over_relay']):>6}"
        f"  ({cpu[0]:.0f} vs {cpu[1]:.0f} us)",
    ]


def noise_warning(results: dict[str, Any]) -> list[str]:
    """A warning when other processes visibly moved the numbers (shared by both reports)."""
    other = disturbance(results)
    if other <= NOISY_OTHER_SHARE:
        return []
    return [
        f"WARNING: other processes used up to {other:.0%} of a core while the benchmark "
        "measured; the numbers are disturbed. Rerun on a quiet machine."
    ]


def _memory(memory: dict[str, Any]) -> list[str]:
    lines = ["Memory (VmRSS; peak = VmHWM)"]
    for name in ("gateway", "relay"):
        idle, after = memory[f"{name}_idle"], memory[f"{name}_after"]
        lines.append(
            f"  {name:<8} idle {_mb(idle['rss_kb']):>9}   after load {_mb(after['rss_kb']):>9}"
            f"   peak {_mb(after['hwm_kb']):>9}"
        )
    return lines


def _targets(checks: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["Targets"]
    for name, check in checks.items():
        value = check["value"]
        shown = "n/a" if value is None or math.isnan(value) else f"{value:.3f}"
        verdict = "PASS" if check["pass"] else "MISS"
        lines.append(f"  {verdict}  {name}: {shown} (target {check['target']})")
    return lines


def print_report(report: dict[str, Any]) -> None:
    env, results = report["environment"], report["results"]
    concurrency = env["plan"]["concurrency"]
    sections = [
        [_heading(env)],
        [raw_table(results, concurrency)],
        ["Measurements with errors:", *_errors(results)] if _errors(results) else [],
        [added_table(report["added_over_direct_ms"], concurrency)],
        _versus_relay(report, concurrency),
        [cpu_table(results, concurrency)],
        noise_warning(results),
        _memory(report["memory_kb"]),
        _targets(report["targets"]),
    ]
    for section in sections:
        if section:
            print()
            print("\n".join(section))
