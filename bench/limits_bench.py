"""What admission under a key's plan costs per request: no limits, the memory backend, Redis.

    .venv/bin/python bench/limits_bench.py [--quick] [--out PATH] [--redis-server PATH]

Starts the fake OpenAI upstream, a private `redis-server` on a free 127.0.0.1 port (never the
machine's own Redis) and the gateway three times side by side, each in its own process and each
with one key every request carries:

  none    the key's plan has no limits: no admission at all (the baseline)
  memory  rpm/tpm/max_concurrent set too high to ever refuse, `limits.backend: memory`
  redis   the same plan, `limits.backend: redis` against the private Redis

then measures them, and the upstream directly, in turns with the same load generator:
non-streaming latency at concurrency 1 and throughput at concurrency 64. Prints what the memory
and Redis backends add over no limits, and the Redis commands each request costs (from INFO
commandstats around every measured window, and by script from a short MONITOR sample).
Writes everything to bench/results/limits-latest.json.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _analysis import environment, merge_commands
from _common import HOST, commandstats_delta, free_port, redis_commandstats
from _harness import (
    GATEWAY_CONFIG,
    Target,
    check_config,
    load,
    measure_rounds,
    memory_kb,
    pooled,
    redis_limits_section,
    run_in_tempdir,
    start_gateway,
    start_redis,
    stop_on_sigterm,
    write_results,
)
from _launch import BENCH_DIR, BenchFailed, Children
from _limits_report import analyse, print_report

GATEWAYS = ("none", "memory", "redis")
TARGETS = ("direct", *GATEWAYS)


@dataclass(frozen=True)
class Plan:
    """How much load each measurement gets. Measurements are split into rounds that take
    turns between the targets and are then pooled (see relay_bench.py for why)."""

    rounds: int = 3
    c1_requests: int = 800  # per round
    c1_warmup: int = 100
    concurrency: int = 64
    c64_seconds: float = 3.0
    c64_warmup_s: float = 0.5
    monitor_requests: int = 200  # sequential requests sampled with MONITOR, after the rounds


QUICK = Plan(1, 300, 50, 64, 2.0, 0.5, 100)

# A throwaway secret: the gateways listen on 127.0.0.1 only and live as long as the run.
BENCH_KEY = "sk-limits-bench-not-a-secret"
# High enough that nothing is ever refused, so that every request pays the full admission
# (check, reserve, lease) and settle, and none is cut short by a 429.
NEVER_REFUSING = {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_concurrent": 100_000}

# The common gateway, plus a keyed plan and the limits backend under test.
LIMITED_GATEWAY_CONFIG = (
    GATEWAY_CONFIG
    + """\
plans:
  bench: {plan}
keys:
  - {{name: bench, key: "{key}", plan: bench}}
limits: {limits}
"""
)


def gateway_config(name: str, upstream_port: int, redis_port: int) -> str:
    """The config of one of the three gateways, each failing closed (`on_backend_error:
    deny`) so that neither backend is flattered by requests served without asking it."""
    plan = (
        "{}"
        if name == "none"
        else "{" + ", ".join(f"{k}: {v}" for k, v in NEVER_REFUSING.items()) + "}"
    )
    if name == "redis":
        limits = redis_limits_section(redis_port)
    else:
        limits = "{backend: memory, on_backend_error: deny}"
    return LIMITED_GATEWAY_CONFIG.format(
        host=HOST, upstream_port=upstream_port, plan=plan, key=BENCH_KEY, limits=limits
    )


def probe(port: int, key: str | None) -> tuple[int, dict[str, str]]:
    """One chat request straight from here: its status and headers (lower-cased names)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    body = b'{"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}'
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    except (OSError, http.client.HTTPException) as exc:
        raise BenchFailed(f"probe of port {port} failed: {exc}") from exc
    finally:
        conn.close()


def check_setup(ports: dict[str, int]) -> dict[str, Any]:
    """Before measuring: every gateway refuses a request without the key (auth is on for all
    three), serves one with it, and admits it under the plan exactly when it should (the
    x-ratelimit-* headers only come from an admission)."""
    checks: dict[str, Any] = {}
    for name, port in ports.items():
        anonymous, _ = probe(port, None)
        status, headers = probe(port, BENCH_KEY)
        limited = "x-ratelimit-limit-requests" in headers
        checks[name] = {"without_key": anonymous, "with_key": status, "admitted": limited}
        if anonymous != 401 or status != 200 or limited != (name != "none"):
            raise BenchFailed(f"gateway {name!r} is not set up as intended: {checks[name]}")
    return checks


def scenarios(plan: Plan) -> dict[str, dict[str, Any]]:
    return {
        "c1": {"mode": "latency", "requests": plan.c1_requests, "warmup": plan.c1_warmup},
        "c64": {
            "mode": "throughput",
            "concurrency": plan.concurrency,
            "duration_s": plan.c64_seconds,
            "warmup_s": plan.c64_warmup_s,
        },
    }


def script_names() -> dict[str, str]:
    """EVALSHA digest -> which of the gateway's Lua scripts it runs, read from the gateway's
    own modules (so a renamed or edited script is still recognised)."""
    try:
        from gateway.limits import cooldowns_redis
        from gateway.limits import redis as limits_redis
    except ImportError:  # pragma: no cover - the bench runs in the project's virtualenv
        return {}
    names: dict[str, str] = {}
    for label, module in (("limits", limits_redis), ("cooldowns", cooldowns_redis)):
        for attr, value in vars(module).items():
            if isinstance(value, limits_redis.LuaScript):
                names[value.sha] = f"{label} {attr.strip('_').lower()}"
    return names


_MONITOR_LINE = re.compile(r'^\d+\.\d+ \[\d+ (\S+)\] "([^"]*)"(?: "([^"]*)")?')


def monitor_sample(
    children: Children, redis_cli: str | None, redis_port: int, target: Target, plan: Plan,
    workdir: Path,
) -> dict[str, Any]:  # fmt: skip
    """Which commands one request sends to Redis, by script: MONITOR (which slows Redis, so
    never during a measured window) while `plan.monitor_requests` requests run one by one.
    Everything Redis receives meanwhile is counted, the lease keeper's renewals included."""
    if redis_cli is None:
        return {"skipped": "redis-cli not found"}
    out = workdir / "monitor.txt"
    monitor = children.start(
        "redis-cli monitor", [redis_cli, "-h", HOST, "-p", str(redis_port), "monitor"],
        log=workdir / "monitor.stderr", stdout=out,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 5
        while not out.read_bytes().startswith(b"OK"):
            if monitor.poll() is not None or time.monotonic() > deadline:
                return {"skipped": "redis-cli monitor did not start"}
            time.sleep(0.02)
        result = load(target, {"mode": "latency", "requests": plan.monitor_requests, "warmup": 0})
        time.sleep(0.3)  # a settle may still be on its way when the response has arrived
    finally:
        children.stop(monitor)
    names = script_names()
    top: Counter[str] = Counter()
    inside = 0
    for line in out.read_text(errors="replace").splitlines():
        match = _MONITOR_LINE.match(line)
        if match is None:
            continue
        client, command, first_arg = match.group(1), match.group(2).lower(), match.group(3)
        if client == "lua":
            inside += 1
        elif command == "evalsha" and first_arg:
            top[names.get(first_arg, f"evalsha {first_arg[:12]}")] += 1
        elif command != "info":
            top[command] += 1
    sent = int(result["sent"])
    return {
        "requests": sent,
        "errors": result["errors"],
        "top_level_per_request": {name: n / sent for name, n in top.most_common()},
        "top_level_total_per_request": sum(top.values()) / sent,
        "inside_scripts_per_request": inside / sent,
    }


def run_bench(plan: Plan, workdir: Path, redis_server: str) -> dict[str, Any]:
    """Start everything, measure, stop everything (also on any error)."""
    servers = str(BENCH_DIR / "_servers.py")
    up_port, redis_port = free_port(), free_port()
    ports = {name: free_port() for name in GATEWAYS}
    with Children() as children:
        upstream = children.start(
            "upstream",
            [sys.executable, servers, "upstream", "--port", str(up_port)],
            log=workdir / "upstream.stderr",
        )
        children.wait_ready(upstream, up_port)
        redis = start_redis(children, redis_server, redis_port, workdir)
        gateways = {}
        for name in GATEWAYS:
            config = workdir / f"gateway-{name}.yaml"
            config.write_text(gateway_config(name, up_port, redis_port))
            check_config(config)
            # /readyz: for the Redis one, only ready once Redis answers it.
            gateways[name] = start_gateway(
                children, f"gateway-{name}", config, ports[name], workdir, "/readyz"
            )
        setup = check_setup(ports)

        auth = {"Authorization": f"Bearer {BENCH_KEY}"}
        up = {"upstream": upstream.pid}
        targets = (
            Target("direct", up_port, "bench-model", up),
            *(
                Target(name, ports[name], "fast", {**up, "gateway": gateways[name].pid},
                       headers=auth)
                for name in ("none", "memory")
            ),
            Target("redis", ports["redis"], "fast",
                   {**up, "gateway": gateways["redis"].pid, "redis": redis.pid},
                   headers=auth, redis_port=redis_port),
        )  # fmt: skip
        print(f"measuring {', '.join(TARGETS)}, taking turns:", flush=True)
        before = redis_commandstats(redis_port)
        # Direct at c=64 would only measure the load generator's own ceiling: skipped.
        raw = measure_rounds(targets, scenarios(plan), plan.rounds, only={"c64": GATEWAYS})
        whole_run = commandstats_delta(before, redis_commandstats(redis_port))
        children.check_alive()  # a server that died mid-run makes every later number wrong
        print("sampling Redis commands per request with MONITOR", flush=True)
        sample = monitor_sample(
            children, shutil.which("redis-cli", path=str(Path(redis_server).parent))
            or shutil.which("redis-cli"), redis_port, targets[-1], plan, workdir,
        )  # fmt: skip
        memory = {name: memory_kb(proc.pid) for name, proc in gateways.items()}
        memory["redis-server"] = memory_kb(redis.pid)
    results = pooled(raw)
    sent = sum(int(summary["sent"]) for summary in results["redis"].values())
    return {
        "setup_checks": setup,
        "results": results,
        "redis_whole_run": {"requests_sent": sent, "commands": merge_commands([whole_run])},
        "redis_monitor_sample": sample,
        "memory_kb_after": memory,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (numbers noisy)")
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "results" / "limits-latest.json",
        help="results JSON",
    )
    parser.add_argument("--redis-server", help="the redis-server binary (default: from PATH)")
    args = parser.parse_args()
    redis_server = args.redis_server or shutil.which("redis-server")
    if redis_server is None:
        print("redis-server not found on PATH (apt-get install redis-server, or give "
              "--redis-server PATH)", file=sys.stderr)  # fmt: skip
        return 2
    stop_on_sigterm()
    plan = QUICK if args.quick else Plan()
    started = time.monotonic()
    measured = run_in_tempdir(
        "limits-bench-", lambda workdir: run_bench(plan, workdir, redis_server)
    )
    report = {
        "environment": environment(asdict(plan), time.monotonic() - started),
        "config": {"plan_limits": NEVER_REFUSING, "key": "bench (Authorization: Bearer)"},
        **measured,
    }
    report.update(analyse(report))
    print_report(report)
    write_results(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
