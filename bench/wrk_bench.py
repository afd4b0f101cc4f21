"""The gateway against a bare aiohttp relay, every target driven by `wrk`, in front of nginx.

    .venv/bin/python bench/wrk_bench.py [--quick] [--rounds N] [--out PATH]

A Python load generator tops out near the bare relay's speed and so flatters whatever is
slower; `wrk` (C) and an nginx upstream answering from memory are never the bottleneck, so the
ratios here are the targets' own. Targets, each its own process:

- direct: wrk straight at nginx (the floor for latency);
- relay: a bare aiohttp relay on uvloop (`_servers.py relay`: read the body, forward it with one
  pooled session, copy the answer back);
- gateway: `gateway serve` with everything a production config turns on: auth (a key), a tier,
  prices, the access log (info, to a file), the usage JSONL sink, metrics;
- gateway+limits: the same, the key's plan with memory limits (rpm, tpm, concurrency) set
  high enough never to refuse;
- gateway+redis: the same plan with `limits.backend: redis` against a private `redis-server`
  on a free port (installed by the bench when missing; never the machine's own Redis), with
  `on_backend_error: deny` so that a Redis that did not answer shows as errors, not as
  requests served without asking it;
- baseline (with `--baseline-root PATH`): the gateway target again, its code from another
  checkout (a worktree of an older commit), so that a change's gain is measured in one run.

Measured in rounds that take turns between the targets (a shared VM's speed drifts): c=1 p50 and
p99; requests/s at c=64 with the CPU time (user and system, from /proc) each request cost the
target's process; a short stream at c=1 (its whole time: nginx sends it in one write, so this is
time to first token plus the relaying); CPU per relayed event, from the CPU per request of a
46-event and a 6-event stream at c=64. Every figure also as a ratio to the bare relay, and
for the two limited targets what the limits cost against the same gateway without them (the
c=64 requests/s and CPU per request ratios, the c=1 p50 added, redis-server's CPU per
request), all from the same run.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from _common import HOST, free_port
from _harness import (
    check_config,
    redis_limits_section,
    run_in_tempdir,
    start_gateway,
    start_redis,
    stop_on_sigterm,
    write_results,
)
from _launch import BENCH_DIR, Children, ensure_command
from _nginx import EXTRA_LONG_EVENTS, nginx_argv
from _wrk import run_wrk, write_script

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROUTES = {"chat": "", "short": "/short", "long": "/long"}  # nginx path prefix per upstream shape

GATEWAY_CONFIG = """\
server: {{host: {host}, port: 0, log_level: info, shutdown_grace_s: 1}}
providers:
  up: {{type: openai, base_url: "http://{host}:{upstream_port}/v1"}}
  up-short: {{type: openai, base_url: "http://{host}:{upstream_port}/short/v1"}}
  up-long: {{type: openai, base_url: "http://{host}:{upstream_port}/long/v1"}}
models:
  bench-model: {{provider: up, model: bench-model, price: {{input: 0.15, output: 0.6}}}}
  bench-short: {{provider: up-short, model: bench-model, price: {{input: 0.15, output: 0.6}}}}
  bench-long: {{provider: up-long, model: bench-model, price: {{input: 0.15, output: 0.6}}}}
tiers:
  chat: [bench-model]
  short: [bench-short]
  long: [bench-long]
plans:
  open: {{}}
  limited: {{rpm: 100000000, tpm: 1000000000, max_concurrent: 100000}}
keys:
  - {{name: open-key, key: sk-bench-open, plan: open, feature: chat-api}}
  - {{name: limited-key, key: sk-bench-limited, plan: limited, feature: chat-api}}
limits: {limits}
usage:
  features: [chat-api]
  sinks: {{jsonl: usage.jsonl}}
"""


@dataclass(frozen=True)
class Plan:
    rounds: int = 3
    c1_s: float = 4.0
    c64_s: float = 6.0
    stream_c1_s: float = 3.0
    stream_c64_s: float = 5.0
    concurrency: int = 64


QUICK = Plan(rounds=1, c1_s=2.0, c64_s=3.0, stream_c1_s=2.0, stream_c64_s=2.0)


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    pid: int | None  # whose CPU is counted (None: direct, nothing in between)
    gateway: bool  # speaks the gateway's API (tier as model, a key) or the upstream's paths
    key: str = ""
    redis_pid: int | None = None  # the target's redis-server, whose CPU is counted too

    def url(self, route: str) -> str:
        path = "/v1/chat/completions" if self.gateway else ROUTES[route] + "/v1/chat/completions"
        return f"http://{HOST}:{self.port}{path}"


# scenario -> (route, stream, concurrency is 64, duration attribute of Plan)
SCENARIOS = {
    "c1": ("chat", False, False, "c1_s"),
    "c64": ("chat", False, True, "c64_s"),
    "stream_c1": ("short", True, False, "stream_c1_s"),
    "short_c64": ("short", True, True, "stream_c64_s"),
    "long_c64": ("long", True, True, "stream_c64_s"),
}


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(user, system) clock ticks the process (all its threads) has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    fields = text[text.rfind(")") + 2 :].split()
    return int(fields[11]), int(fields[12])


def _ticks_of(pid: int | None) -> tuple[int, int]:
    """`cpu_ticks`, or none for a process that is not there (direct: nothing in between)."""
    return cpu_ticks(pid) if pid else (0, 0)


def measure(target: Target, scenario: str, plan: Plan, workdir: Path) -> dict[str, Any]:
    route, stream, at_c64, duration_attr = SCENARIOS[scenario]
    body: dict[str, Any] = {
        "model": route if target.gateway else "bench-model",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    headers = {"Authorization": f"Bearer {target.key}"} if target.key else {}
    script = write_script(workdir / f"{target.name}-{scenario}.lua", body, headers)
    connections = plan.concurrency if at_c64 else 1
    before, redis_before = _ticks_of(target.pid), sum(_ticks_of(target.redis_pid))
    summary = run_wrk(target.url(route), script, connections, getattr(plan, duration_attr), 1)
    after, redis_after = _ticks_of(target.pid), sum(_ticks_of(target.redis_pid))
    requests = max(summary["requests"], 1)
    summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
    summary["user_us"] = (after[0] - before[0]) / _CLOCK_TICKS * 1e6 / requests
    summary["sys_us"] = (after[1] - before[1]) / _CLOCK_TICKS * 1e6 / requests
    summary["redis_us"] = (redis_after - redis_before) / _CLOCK_TICKS * 1e6 / requests
    return summary


def wanted(target: Target, scenario: str) -> bool:
    # Straight at nginx only latency means something; its CPU and throughput are not a
    # Python target's floor.
    return target.pid is not None or scenario in ("c1", "stream_c1")


MEMORY_LIMITS = "{backend: memory}"


def write_gateway_config(
    directory: Path, upstream_port: int, limits: str = MEMORY_LIMITS, name: str = "gateway"
) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(GATEWAY_CONFIG.format(host=HOST, upstream_port=upstream_port, limits=limits))
    check_config(path)
    return path


def start_baseline(children: Children, root: Path, config: Path, port: int, workdir: Path) -> Any:
    """The gateway from `root`'s checkout: its package first on the path."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
    proc = children.start("baseline", argv, log=workdir / "baseline.stderr", cwd=workdir, env=env)
    children.wait_ready(proc, port, health_path="/healthz")
    return proc


def run_bench(
    plan: Plan, workdir: Path, baseline_root: Path | None = None
) -> dict[str, list[dict[str, Any]]]:
    python = sys.executable
    servers = str(BENCH_DIR / "_servers.py")
    up_port, relay_port, gw_port, lim_port, redis_gw_port, redis_port = (
        free_port() for _ in range(6)
    )
    raw: dict[str, list[dict[str, Any]]] = {}
    with Children() as children:
        nginx = children.start("nginx", nginx_argv(workdir, up_port), log=workdir / "nginx.err")
        children.wait_ready(nginx, up_port, health_path=None)
        relay = children.start(
            "relay",
            [python, servers, "relay", "--port", str(relay_port), "--upstream-port", str(up_port)],
            log=workdir / "relay.stderr",
        )
        children.wait_ready(relay, relay_port)
        config = write_gateway_config(workdir, up_port)
        gateway = start_gateway(children, "gateway", config, gw_port, workdir)
        limited = start_gateway(children, "gateway-limits", config, lim_port, workdir)
        redis = start_redis(
            children, ensure_command("redis-server", "redis-server"), redis_port, workdir
        )
        redis_config = write_gateway_config(
            workdir, up_port, redis_limits_section(redis_port), "gateway-redis"
        )
        on_redis = start_gateway(children, "gateway-redis", redis_config, redis_gw_port, workdir)
        targets: tuple[Target, ...] = (
            Target("direct", up_port, None, False),
            Target("relay", relay_port, relay.pid, False),
            Target("gateway", gw_port, gateway.pid, True, "sk-bench-open"),
            Target("gateway+limits", lim_port, limited.pid, True, "sk-bench-limited"),
            Target(
                "gateway+redis", redis_gw_port, on_redis.pid, True, "sk-bench-limited", redis.pid
            ),
        )
        if baseline_root is not None:
            base_port = free_port()
            baseline = start_baseline(children, baseline_root, config, base_port, workdir)
            targets += (Target("baseline", base_port, baseline.pid, True, "sk-bench-open"),)
        for target in targets:  # warm up: connections, caches, the JIT-less interpreter's dicts
            if target.pid:
                measure(target, "c64", Plan(c64_s=1.0), workdir)
                measure(target, "short_c64", Plan(stream_c64_s=1.0), workdir)
        for round_no in range(1, plan.rounds + 1):
            print(f"  round {round_no}/{plan.rounds}:", end="", flush=True)
            for scenario in SCENARIOS:
                print(f" {scenario}", end="", flush=True)
                for target in targets:
                    if wanted(target, scenario):
                        result = measure(target, scenario, plan, workdir)
                        raw.setdefault(f"{target.name}/{scenario}", []).append(result)
            print(flush=True)
        children.check_alive()
    for target in targets:
        if target.gateway and sum(
            r["errors"] for k, v in raw.items() if k.startswith(target.name + "/") for r in v
        ):
            log = workdir / f"{target.name.replace('+', '-')}.stderr"  # as started above
            print(f"  {target.name}: {answers_in_log(log)}")
    return raw


def answers_in_log(path: Path) -> str:
    """What a gateway answered, from its access log: how many of each status, and the first
    error's message (what a run with errors measured instead of the target)."""
    statuses: collections.Counter[int] = collections.Counter()
    first_error = ""
    with path.open("rb") as log:
        for line in log:
            if b'"logger":"gateway.access"' not in line:
                continue
            record = orjson.loads(line)
            statuses[record["status"]] += 1
            if not first_error and record["status"] >= 500:
                first_error = record.get("error", "")
    return f"statuses {dict(sorted(statuses.items()))}; first 5xx: {first_error or '-'}"


def pool(raw: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per target and scenario: the median over rounds of each figure."""
    pooled: dict[str, dict[str, dict[str, float]]] = {}
    for key, rounds in raw.items():
        target, scenario = key.split("/")
        figures = {
            name: statistics.median(r[name] for r in rounds)
            for name in ("p50_us", "p99_us", "rps", "user_us", "sys_us", "redis_us")
        }
        figures["errors"] = sum(r["errors"] + r["timeouts"] for r in rounds)
        pooled.setdefault(target, {})[scenario] = figures
    return pooled


def _ratio(value: float, floor: float) -> str:
    # Below half a microsecond the floor is measurement noise, not a cost to divide by.
    return f"{value / floor:.2f}x" if floor >= 0.5 else "n/a"


Figures = dict[str, dict[str, float]]  # scenario -> figure -> value, for one target


def _cpu(t: Figures, scenario: str = "c64") -> float:
    return t[scenario]["user_us"] + t[scenario]["sys_us"]


def _per_event(t: Figures) -> float:
    """CPU per relayed event: what 40 more events in a stream cost, per event."""
    return (_cpu(t, "long_c64") - _cpu(t, "short_c64")) / EXTRA_LONG_EVENTS


Row = tuple[str, tuple[str, ...], Callable[[Figures], str]]  # label, scenarios it reads, cell


def _errors(t: Figures, scenarios: tuple[str, ...]) -> int:
    return int(sum(t[scenario]["errors"] for scenario in scenarios))


def _rows(relay: Figures, direct: Figures) -> list[Row]:
    def ms(value_us: float) -> str:
        return f"{value_us / 1000:.2f}"

    def latency(t: Figures) -> str:
        return f"{ms(t['c1']['p50_us'])} / {ms(t['c1']['p99_us'])} ms"

    def added(scenario: str) -> Callable[[Figures], str]:
        return lambda t: f"{ms(t[scenario]['p50_us'] - direct[scenario]['p50_us'])} ms"

    def rps(scenario: str) -> Callable[[Figures], str]:
        def cell(t: Figures) -> str:
            value = t[scenario]["rps"]
            return f"{value:.0f} ({_ratio(value, relay[scenario]['rps'])})"

        return cell

    def cpu(t: Figures) -> str:
        user, system = t["c64"]["user_us"], t["c64"]["sys_us"]
        return f"{user:.0f} + {system:.0f} us ({_ratio(_cpu(t), _cpu(relay))})"

    def per_event(t: Figures) -> str:
        return f"{_per_event(t):.1f} us ({_ratio(_per_event(t), _per_event(relay))})"

    return [
        ("c=1 p50 / p99", ("c1",), latency),
        ("c=1 p50 added over direct", ("c1",), added("c1")),
        ("c=64 requests/s", ("c64",), rps("c64")),
        ("CPU per request (c=64), user + sys", ("c64",), cpu),
        ("stream c=1 p50 added over direct", ("stream_c1",), added("stream_c1")),
        ("stream c=64 requests/s", ("short_c64",), rps("short_c64")),
        ("CPU per relayed event", ("long_c64", "short_c64"), per_event),
    ]


LIMITED = ("gateway+limits", "gateway+redis")


def _limit_rows(gateway: Figures) -> list[Row]:
    """What the limits cost: each limited target against the gateway without limits, from
    the same run (the scaling issue's targets are stated that way), for the limited targets
    only (`report` puts "-" in the others)."""

    def rps_ratio(t: Figures) -> str:
        return f"{t['c64']['rps'] / gateway['c64']['rps']:.2f}x"

    def added_p50(t: Figures) -> str:
        return f"{(t['c1']['p50_us'] - gateway['c1']['p50_us']) / 1000:+.2f} ms"

    def cpu_ratio(t: Figures) -> str:
        return f"{_cpu(t) / _cpu(gateway):.2f}x"

    def redis_cpu(t: Figures) -> str:
        return f"{t['c64']['redis_us']:.0f} us" if t["c64"]["redis_us"] else "-"

    return [
        ("limits: c=64 requests/s / gateway's", ("c64",), rps_ratio),
        ("limits: c=1 p50 added over gateway's", ("c1",), added_p50),
        ("limits: CPU per request (c=64) / gateway's", ("c64",), cpu_ratio),
        ("redis-server CPU per request (c=64)", ("c64",), redis_cpu),
    ]


def report(pooled: dict[str, Figures]) -> list[str]:
    """The run as a Markdown table (the README's), each figure with its ratio to the relay."""
    names = [
        name
        for name in ("relay", "gateway", "gateway+limits", "gateway+redis", "baseline")
        if name in pooled
    ]
    titles = {"relay": "bare relay", "baseline": "baseline (gateway, other checkout)"}
    lines = [
        f"wrk_bench on {platform.node()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| | " + " | ".join(titles.get(name, name) for name in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    rows: list[tuple[Row, str, Collection[str]]]
    rows = [(row, "relay", names) for row in _rows(pooled["relay"], pooled["direct"])]
    rows += [(row, "gateway", LIMITED) for row in _limit_rows(pooled["gateway"])]
    for (label, scenarios, cell), reference, shown in rows:
        cells = []
        for name in names:
            failed = _errors(pooled[name], scenarios)
            if name not in shown:
                cells.append("-")
            elif failed or _errors(pooled[reference], scenarios):
                # A run with errors measured failures, not the target: no figure for it.
                cells.append(f"invalid ({failed} errors)" if failed else f"invalid ({reference})")
            else:
                cells.append(cell(pooled[name]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    errors = {name: sum(s["errors"] for s in by.values()) for name, by in pooled.items()}
    if any(errors.values()):
        lines += ["", f"ERRORS (connect/read/write/non-2xx/timeouts) by target: {errors}"]
    direct = pooled["direct"]
    lines += [
        "",
        f"direct (nginx): c=1 p50 {direct['c1']['p50_us'] / 1000:.2f} ms, "
        f"stream c=1 p50 {direct['stream_c1']['p50_us'] / 1000:.2f} ms. nginx writes a stream "
        "whole, so the relay copies it in one piece; the gateway still reads it event by event.",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (numbers noisy)")
    parser.add_argument("--rounds", type=int, help="rounds taking turns (default 3)")
    parser.add_argument(
        "--baseline-root",
        type=Path,
        help="also measure the gateway of this checkout (e.g. a worktree of an older commit)",
    )
    parser.add_argument(
        "--out", type=Path, default=BENCH_DIR / "results" / "wrk_latest.json", help="results JSON"
    )
    args = parser.parse_args()
    stop_on_sigterm()
    plan = QUICK if args.quick else Plan()
    if args.rounds:
        plan = Plan(**{**asdict(plan), "rounds": args.rounds})
    print(
        "measuring direct, relay, gateway, gateway+limits, gateway+redis with wrk, taking turns:",
        flush=True,
    )
    root = args.baseline_root.resolve() if args.baseline_root else None
    if root is not None and not (root / "gateway" / "__init__.py").is_file():
        parser.error(f"{root} has no gateway/__init__.py")
    raw = run_in_tempdir("wrk-bench-", lambda workdir: run_bench(plan, workdir, root))
    pooled = pool(raw)
    text = report(pooled)
    print("\n" + "\n".join(text))
    write_results(args.out, {"plan": asdict(plan), "pooled": pooled, "raw": raw, "report": text})
    if any(figures["errors"] for by in pooled.values() for figures in by.values()):
        print("some measurements had errors: their figures are marked invalid", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
