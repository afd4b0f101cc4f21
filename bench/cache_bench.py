"""The response cache's cost and gain: the gateway without a cache against the gateway with a
memory cache (and with `--redis`, a Redis cache), every target driven by `wrk` in front of
nginx.

    .venv/bin/python bench/cache_bench.py [--quick] [--rounds N] [--redis] [--out PATH]
    .venv/bin/python bench/cache_bench.py --bound-minutes 10 [--bound-mb 16]

Targets, each its own `gateway serve` process on one config (a key, a tier, prices, the access
log at info, the JSONL usage sink, memory limits off) that differs only in its `cache:` section:

- no cache: no `cache:` section;
- memory: `backend: memory` (`max_mb` 64);
- redis (with `--redis`): `backend: redis` on a redis-server this script starts on a free port.

Scenarios: MISSES (a wrk Lua script gives every request a body of its own, so every lookup
misses and every answer is stored) and HITS (the same body every time, stored once before the
measurement). The gateway without a cache is driven with both scripts: the same requests,
nothing looked up or stored, and each cache figure is compared with its own script's there.
Each at c=1 (p50, p99) and c=64 (requests/s), in rounds taking
turns between the targets, medians over the rounds. Every measurement is checked against
`gateway_cache_requests_total`: a miss run must have been all misses, a hit run all hits.

`--bound-minutes N` runs the long bound check instead: unique requests for N minutes against a
memory cache of `--bound-mb`, printing every `--sample-s` the gateway's RSS and what the cache
holds (`gateway_cache_memory_bytes`, `_entries`), then the verdict: the held bytes never above
the bound, and the RSS flat once the cache is full.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import secrets
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from _common import HOST, free_port, proc_status_kb
from _harness import check_config, run_in_tempdir, start_gateway, stop_on_sigterm, write_results
from _launch import BENCH_DIR, BenchFailed, Children, ensure_command
from _nginx import nginx_argv
from _wrk import run_wrk, write_script, write_unique_script

KEY = "sk-bench-cache"
MARKER = "@@UNIQUE@@"
MEMORY_MB = 64

GATEWAY_CONFIG = """\
server: {{host: {host}, port: 0, log_level: info, shutdown_grace_s: 1}}
providers:
  up: {{type: openai, base_url: "http://{host}:{upstream_port}/v1"}}
models:
  bench-model: {{provider: up, model: bench-model, price: {{input: 0.15, output: 0.6}}}}
tiers:
  chat: [bench-model]
plans:
  open: {{}}
keys:
  - {{name: bench-key, key: {key}, plan: open, feature: chat-api}}
limits: {{backend: memory}}
usage:
  features: [chat-api]
  sinks: {{jsonl: usage-{name}.jsonl}}
{extra}"""


@dataclass(frozen=True)
class Plan:
    rounds: int = 3
    c1_s: float = 3.0
    c64_s: float = 5.0
    concurrency: int = 64


QUICK = Plan(rounds=1, c1_s=2.0, c64_s=2.0)


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    cached: bool

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1/chat/completions"


def body(content: str) -> dict[str, Any]:
    return {
        "model": "chat",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
    }


def write_config(workdir: Path, name: str, upstream_port: int, extra: str) -> Path:
    path = workdir / f"gateway-{name}.yaml"
    path.write_text(
        GATEWAY_CONFIG.format(
            host=HOST, upstream_port=upstream_port, key=KEY, name=name, extra=extra
        )
    )
    check_config(path)
    return path


# --- /metrics ------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """The cache's samples from the target's /metrics: `hit`, `miss`, `bypass` (chat API),
    `bytes`, `entries` (the memory backend)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        text = response.read().decode()
    finally:
        conn.close()
    if response.status != 200:
        raise BenchFailed(f"/metrics on port {port} answered {response.status}")
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith('gateway_cache_requests_total{api="chat",result="'):
            out[name.split('result="')[1].split('"')[0]] = float(value)
        elif name == "gateway_cache_memory_bytes":
            out["bytes"] = float(value)
        elif name == "gateway_cache_memory_entries":
            out["entries"] = float(value)
    return out


def post_once(port: int, payload: dict[str, Any]) -> str:
    """One request; its x-gateway-cache header (to store the hit scenario's answer first)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=orjson.dumps(payload),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise BenchFailed(f"the gateway on port {port} answered {response.status}")
    return response.getheader("x-gateway-cache") or ""


# --- the comparison ------------------------------------------------------------------------

# scenario -> (unique bodies, connections is the plan's concurrency). With a cache, unique
# bodies are all misses and the one body all hits; without, they are the same requests.
SCENARIOS = {
    "unique_c1": (True, False),
    "unique_c64": (True, True),
    "same_c1": (False, False),
    "same_c64": (False, True),
}
HIT_BODY = body("What does a response cache do?")


def measure(target: Target, scenario: str, plan: Plan, workdir: Path) -> dict[str, Any]:
    unique, at_c64 = SCENARIOS[scenario]
    headers = {"Authorization": f"Bearer {KEY}"}
    script = workdir / f"{target.name}-{scenario}.lua"
    if unique:
        # A fresh nonce each time: a later round must not hit what an earlier one stored.
        content = f"Say hello {secrets.token_hex(6)} {MARKER}."
        write_unique_script(script, body(content), MARKER, headers)
    else:
        write_script(script, HIT_BODY, headers)
    before = scrape(target.port)
    connections = plan.concurrency if at_c64 else 1
    summary = run_wrk(target.url, script, connections, plan.c64_s if at_c64 else plan.c1_s, 1)
    after = scrape(target.port)
    summary["rps"] = summary["requests"] / (summary["duration_us"] / 1e6)
    for result in ("hit", "miss", "bypass"):
        summary[result] = after.get(result, 0.0) - before.get(result, 0.0)
    return summary


def check_results(target: Target, scenario: str, summary: dict[str, Any]) -> str | None:
    """What is wrong with a measurement, if anything: errors, or cache results other than
    the scenario's (wrk may have one request unfinished at the end: it is not counted)."""
    if summary["errors"] or summary["timeouts"]:
        return f"{summary['errors']} errors, {summary['timeouts']} timeouts"
    if not target.cached:
        return None
    expected = "miss" if SCENARIOS[scenario][0] else "hit"
    counted = summary["hit"] + summary["miss"] + summary["bypass"]
    if summary[expected] < counted or summary[expected] < summary["requests"]:
        return (
            f"expected all {expected}: {summary['hit']:.0f} hits, {summary['miss']:.0f} misses, "
            f"{summary['bypass']:.0f} bypasses for {summary['requests']} requests"
        )
    return None


def run_comparison(
    plan: Plan, workdir: Path, with_redis: bool
) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], list[str]]:
    up_port = free_port()
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    problems: list[str] = []
    with Children() as children:
        nginx = children.start("nginx", nginx_argv(workdir, up_port), log=workdir / "nginx.err")
        children.wait_ready(nginx, up_port, health_path=None)
        sections = {
            "no cache": "",
            "memory": f"cache: {{backend: memory, ttl_s: 3600, max_mb: {MEMORY_MB}}}\n",
        }
        if with_redis:
            redis_port = free_port()
            redis = children.start(
                "redis-server",
                [
                    ensure_command("redis-server", "redis-server"),
                    *("--port", str(redis_port), "--bind", HOST, "--save", ""),
                    *("--appendonly", "no", "--dir", str(workdir), "--loglevel", "warning"),
                ],
                log=workdir / "redis.err",
            )
            children.wait_ready(redis, redis_port)
            sections["redis"] = (
                f"redis: {{url: 'redis://{HOST}:{redis_port}/0'}}\n"
                "cache: {backend: redis, ttl_s: 3600}\n"
            )
        targets: list[Target] = []
        for name, extra in sections.items():
            slug = name.replace(" ", "-")
            config = write_config(workdir, slug, up_port, extra)
            port = free_port()
            start_gateway(children, f"gateway-{slug}", config, port, workdir)
            targets.append(Target(name, port, bool(extra)))
        for target in targets:
            # Warm up (connections, the interpreter's caches), and store the hit body.
            measure(target, "unique_c64", Plan(c64_s=1.0), workdir)
            first, second = post_once(target.port, HIT_BODY), post_once(target.port, HIT_BODY)
            if (first, second) != (("miss", "hit") if target.cached else ("", "")):
                raise BenchFailed(f"{target.name}: the hit body was {first!r}, then {second!r}")
            measure(target, "same_c64", Plan(c64_s=1.0), workdir)
        for round_no in range(1, plan.rounds + 1):
            print(f"  round {round_no}/{plan.rounds}:", end="", flush=True)
            for scenario in SCENARIOS:
                print(f" {scenario}", end="", flush=True)
                for target in targets:
                    summary = measure(target, scenario, plan, workdir)
                    problem = check_results(target, scenario, summary)
                    if problem:
                        problems.append(f"{target.name} {scenario} round {round_no}: {problem}")
                    raw.setdefault(target.name, {}).setdefault(scenario, []).append(summary)
            print(flush=True)
        children.check_alive()
    return raw, problems


Figures = dict[str, dict[str, float]]  # scenario -> figure -> median over rounds


def pool(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Figures]:
    return {
        target: {
            scenario: {
                name: statistics.median(r[name] for r in rounds)
                for name in ("p50_us", "p99_us", "rps")
            }
            for scenario, rounds in by_scenario.items()
        }
        for target, by_scenario in raw.items()
    }


def report(pooled: dict[str, Figures], problems: list[str]) -> list[str]:
    cached = [name for name in ("memory", "redis") if name in pooled]
    # (target, script, title), each compared with the gateway without a cache on its script.
    columns = [("no cache", "unique", "no cache, unique bodies")]
    columns += [(name, "unique", f"{name}: misses") for name in cached]
    columns += [("no cache", "same", "no cache, one body")]
    columns += [(name, "same", f"{name}: hits") for name in cached]
    nocache = pooled["no cache"]

    def ms(us: float) -> str:
        return f"{us / 1000:.2f}"

    def signed(us: float) -> str:
        return f"{'+' if us >= 0 else '-'}{abs(us) / 1000:.2f} ms"

    def latency(target: str, script: str) -> str:
        c1 = pooled[target][f"{script}_c1"]
        return f"{ms(c1['p50_us'])} / {ms(c1['p99_us'])} ms"

    def versus(target: str, script: str) -> str:
        if target == "no cache":
            return "-"
        return signed(pooled[target][f"{script}_c1"]["p50_us"] - nocache[f"{script}_c1"]["p50_us"])

    def rps(target: str, script: str) -> str:
        value = pooled[target][f"{script}_c64"]["rps"]
        return f"{value:.0f} ({value / nocache[f'{script}_c64']['rps']:.2f}x)"

    rows = [
        (label, [cell(target, script) for target, script, _ in columns])
        for label, cell in (
            ("c=1 p50 / p99", latency),
            ("c=1 p50 vs no cache", versus),
            ("c=64 requests/s (vs no cache)", rps),
        )
    ]
    lines = [
        f"cache_bench on {platform.node()} ({os.cpu_count()} cores), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| | " + " | ".join(title for _, _, title in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
        *(f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows),
        "",
    ]
    for name in ("memory", "redis"):
        if name not in pooled:
            continue
        miss, hit = pooled[name]["unique_c1"], pooled[name]["same_c1"]
        lines.append(
            f"{name}: a miss adds {signed(miss['p50_us'] - nocache['unique_c1']['p50_us'])} at "
            f"p50 (lookup + store); a hit takes {ms(hit['p50_us'])} ms at p50, "
            f"{signed(hit['p50_us'] - nocache['same_c1']['p50_us'])} against the gateway "
            "without a cache."
        )
    lines.append(
        "every measurement checked against gateway_cache_requests_total: "
        + ("all misses were misses and all hits hits" if not problems else "PROBLEMS:")
    )
    lines += [f"  {p}" for p in problems]
    return lines


# --- the bound over a long run -------------------------------------------------------------


def run_bound(minutes: float, bound_mb: float, sample_s: float, workdir: Path) -> dict[str, Any]:
    """Unique requests for `minutes` against a memory cache of `bound_mb`, sampled."""
    bound = int(bound_mb * 1024 * 1024)
    up_port, port = free_port(), free_port()
    samples: list[dict[str, float]] = []
    with Children() as children:
        nginx = children.start("nginx", nginx_argv(workdir, up_port), log=workdir / "nginx.err")
        children.wait_ready(nginx, up_port, health_path=None)
        extra = f"cache: {{backend: memory, ttl_s: 3600, max_mb: {bound_mb:g}}}\n"
        config = write_config(workdir, "bound", up_port, extra)
        proc = start_gateway(children, "gateway-bound", config, port, workdir)
        target = Target("memory", port, True)
        started = time.monotonic()
        print(
            f"unique requests at c=16 for {minutes:g} min, cache max_mb {bound_mb:g} "
            f"({bound} bytes):\n"
            f"{'min':>6} {'requests':>10} {'misses':>10} {'entries':>8} {'held bytes':>11} "
            f"{'of bound':>8} {'RSS MB':>8}",
            flush=True,
        )
        total = 0

        def sample() -> None:
            now = scrape(port)
            rss_kb = proc_status_kb(proc.pid, "VmRSS") or 0
            taken = {
                "minutes": (time.monotonic() - started) / 60,
                "requests": total,
                "misses": now.get("miss", 0.0),
                "entries": now.get("entries", 0.0),  # no cache before the first request
                "bytes": now.get("bytes", 0.0),
                "rss_mb": rss_kb / 1024,
            }
            samples.append(taken)
            print(
                f"{taken['minutes']:6.1f} {total:10d} {taken['misses']:10.0f} "
                f"{taken['entries']:8.0f} {taken['bytes']:11.0f} "
                f"{taken['bytes'] / bound:8.1%} {taken['rss_mb']:8.1f}",
                flush=True,
            )

        sample()  # before any request: the process's own size
        while (elapsed := time.monotonic() - started) < minutes * 60:
            chunk_s = int(min(sample_s, minutes * 60 - elapsed))  # wrk takes whole seconds
            if chunk_s < 1:
                break
            summary = measure(target, "unique_c64", Plan(c64_s=chunk_s, concurrency=16), workdir)
            problem = check_results(target, "unique_c64", summary)
            if problem:
                raise BenchFailed(f"at {elapsed / 60:.1f} min: {problem}")
            total += summary["requests"]
            sample()
        children.check_alive()
    return {"bound_bytes": bound, "bound_mb": bound_mb, "samples": samples}


def bound_verdict(result: dict[str, Any]) -> list[str]:
    """Held bytes never above the bound; RSS flat once the cache is full: from the first
    sample with the cache at least 95% full to the last, it may grow by 5% at most, and never
    by more than 8 MB."""
    bound, samples = result["bound_bytes"], result["samples"]
    if not samples:
        return ["no samples: the run was too short"]
    most = max(s["bytes"] for s in samples)
    lines = [
        f"held bytes: at most {most:.0f} of {bound} ({most / bound:.1%}) over "
        f"{len(samples)} samples: " + ("never above the bound" if most <= bound else "ABOVE IT")
    ]
    full = next((i for i, s in enumerate(samples) if s["bytes"] >= 0.95 * bound), None)
    if full is None or full == len(samples) - 1:
        lines.append("the cache never filled before the last sample: RSS not judged")
        return lines
    first, last = samples[full], samples[-1]
    after = [s["rss_mb"] for s in samples[full:]]
    growth = last["rss_mb"] - first["rss_mb"]
    flat = growth <= min(0.05 * first["rss_mb"], 8.0)
    lines.append(
        f"RSS once full (from {first['minutes']:.1f} min, {first['requests']} requests, to "
        f"{last['minutes']:.1f} min, {last['requests']} requests): {first['rss_mb']:.1f} -> "
        f"{last['rss_mb']:.1f} MB (min {min(after):.1f}, max {max(after):.1f}): "
        + ("flat" if flat else "GROWING")
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (numbers noisy)")
    parser.add_argument("--rounds", type=int, help="rounds taking turns (default 3)")
    parser.add_argument("--redis", action="store_true", help="also a Redis cache target")
    parser.add_argument(
        "--bound-minutes",
        type=float,
        help="instead: unique requests for this long against a small memory cache",
    )
    parser.add_argument("--bound-mb", type=float, default=16.0, help="its max_mb (default 16)")
    parser.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/...)")
    args = parser.parse_args()
    stop_on_sigterm()
    if args.bound_minutes is not None:
        result = run_in_tempdir(
            "cache-bound-",
            lambda workdir: run_bound(args.bound_minutes, args.bound_mb, args.sample_s, workdir),
        )
        text = bound_verdict(result)
        print("\n" + "\n".join(text))
        out = args.out or BENCH_DIR / "results" / "cache_bound_latest.json"
        write_results(out, {**result, "report": text})
        return 0
    plan = QUICK if args.quick else Plan()
    if args.rounds:
        plan = Plan(**{**asdict(plan), "rounds": args.rounds})
    targets = "no cache, memory" + (", redis" if args.redis else "")
    print(f"measuring the gateway with {targets} with wrk, taking turns:", flush=True)
    raw, problems = run_in_tempdir(
        "cache-bench-", lambda workdir: run_comparison(plan, workdir, args.redis)
    )
    pooled = pool(raw)
    text = report(pooled, problems)
    print("\n" + "\n".join(text))
    out = args.out or BENCH_DIR / "results" / "cache_latest.json"
    write_results(
        out,
        {"plan": asdict(plan), "pooled": pooled, "raw": raw, "problems": problems, "report": text},
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
