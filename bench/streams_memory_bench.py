"""How much memory does one gateway process need per stream open at once?

    .venv/bin/python bench/streams_memory_bench.py [--quick] [--points N1,N2] [--out PATH]

Starts the bench upstream in its hold mode (every stream writes its first event, then waits
until the bench releases them all) and, for each allocator (glibc's malloc, which `gateway
serve` runs on with `trim_memory: true`, and CPython's pymalloc), a gateway in front of it with
room for every stream (provider `max_connections` 20000, no concurrency cap). After a warm-up
and a quiet spell, `wrk` opens connections until the upstream counts exactly N1 streams held,
then more until it counts N2: each one a real SSE relay through the gateway, its first event
already relayed, all of them open at once. At each point the gateway's RSS and its open file
descriptors (a client and an upstream connection per stream) are read. Then the streams are
released and finish, and wrk's summary says whether any failed.

Prints RSS at each point, the slope between the two (RSS per open stream) and RSS at 10,000
streams. The fd hard limit here (20000, two per stream) caps one process near 9,950 streams, so
when the last point is below 10,000 the figure is RSS at that point plus the missing streams
times the slope, and the bench says so. Writes bench/results/streams_memory.json.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

import orjson
from _common import HOST, free_port, proc_status_kb
from _harness import check_config, run_in_tempdir, start_gateway, stop_on_sigterm, write_results
from _launch import BENCH_DIR, BenchFailed, Children, spawn
from _wrk import ensure_wrk, run_wrk, write_script

TARGET_STREAMS = 10_000
TARGET_MB = 250.0
ALLOCATORS = ("malloc", "pymalloc")
STREAM_BODY = {
    "model": "fast",
    "stream": True,
    "messages": [{"role": "user", "content": "Hello"}],
}

# The benchmarks' gateway with room for every stream: no concurrency cap, no per-address cap on
# incomplete connections (wrk opens them all at once), a pool as large as the fd limit allows,
# and timeouts longer than the ramp (a held stream is silent after its first event).
CONFIG = """\
server: {{host: {host}, port: 0, log_level: warning, shutdown_grace_s: 1,
  max_concurrent: 1000000, max_pending_per_address: 0, trim_memory: true}}
providers:
  up: {{type: openai, base_url: "http://{host}:{upstream_port}/v1", max_connections: 20000}}
models:
  bench-model:
    provider: up
    model: bench-model
    timeout: {{first_token: 600, total: 1200, idle: 600}}
tiers:
  fast: [bench-model]
"""


@dataclass(frozen=True)
class Plan:
    points: tuple[int, ...] = (2000, 9950)
    quiet_s: float = 12.0  # after warm-up: longer than the trimmer's two 5 s checks
    settle_s: float = 3.0  # once the count is reached: the last streams' first events relayed
    stuck_s: float = 60.0  # no new stream for this long: the ramp failed


QUICK = Plan(points=(500, 2000), quiet_s=6.0, settle_s=2.0)


def upstream_call(port: int, method: str, path: str) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=10.0)
    try:
        conn.request(method, path)
        answer = conn.getresponse()
        text = answer.read().decode()
        if answer.status != 200:
            raise BenchFailed(f"upstream {method} {path}: {answer.status} {text}")
        return text
    finally:
        conn.close()


def rss_mb(pid: int) -> float:
    kb = proc_status_kb(pid, "VmRSS")
    if kb is None:
        raise BenchFailed(f"cannot read VmRSS of process {pid}")
    return kb / 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_wrk(url: str, script: Path, connections: int, out: Path) -> Popen[bytes]:
    """wrk holding `connections` connections open until it is sent SIGINT (then it prints its
    summary). Its timeout is longer than any ramp: a held stream is not a failure."""
    argv = [
        ensure_wrk(),
        f"-t{min(2, connections)}",
        f"-c{connections}",
        "-d3600s",
        "--timeout",
        "600s",
        "-s",
        str(script),
        url,
    ]
    with open(out, "wb") as stdout:
        return spawn(argv, stdout, subprocess.DEVNULL)


def stop_wrk(proc: Popen[bytes], out: Path) -> dict[str, Any]:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise BenchFailed("wrk did not stop on SIGINT") from None
    text = out.read_text(errors="replace")
    for line in text.splitlines():
        if line.startswith("WRK_JSON "):
            summary: dict[str, Any] = orjson.loads(line.removeprefix("WRK_JSON "))
            return summary
    raise BenchFailed(f"wrk printed no summary:\n{text[-2000:]}")


def wait_held(
    children: Children, upstream_port: int, want: int, plan: Plan, wrks: list[Popen[bytes]]
) -> float:
    """Poll the upstream until it holds `want` streams; the seconds it took."""
    start = last_change = time.monotonic()
    last = -1
    while True:
        children.check_alive()
        if any(w.poll() is not None for w in wrks):
            raise BenchFailed("wrk exited during the ramp")
        held = int(upstream_call(upstream_port, "GET", "/bench/held"))
        now = time.monotonic()
        if held >= want:
            return now - start
        if held != last:
            last, last_change = held, now
        elif now - last_change > plan.stuck_s:
            raise BenchFailed(f"stuck at {held} of {want} streams open for {plan.stuck_s:g}s")
        time.sleep(0.5)


def measure(workdir: Path, plan: Plan, allocator: str) -> dict[str, Any]:
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
                "--hold",
            ],
            log=workdir / "upstream.stderr",
        )
        children.wait_ready(upstream, upstream_port)
        config = workdir / f"gateway-{allocator}.yaml"
        config.write_text(CONFIG.format(host=HOST, upstream_port=upstream_port))
        check_config(config)
        port = free_port()
        # PYTHONMALLOC set by the bench: with it, `gateway serve` does not re-run itself, and
        # malloc is what it would have re-run itself with.
        env = {**os.environ, "PYTHONMALLOC": allocator}
        gateway = start_gateway(children, f"gateway-{allocator}", config, port, workdir, env=env)
        url = f"http://{HOST}:{port}/v1/chat/completions"
        script = write_script(workdir / "stream.lua", STREAM_BODY)
        run_wrk(url, script, connections=10, duration_s=2)  # warm-up: imports, pools, caches
        time.sleep(plan.quiet_s)
        idle = rss_mb(gateway.pid)
        print(f"  {allocator}: idle {idle:.0f} MB", flush=True)
        upstream_call(upstream_port, "POST", "/bench/hold")
        wrks: list[tuple[Popen[bytes], Path]] = []
        points: list[dict[str, Any]] = []
        try:
            for want in plan.points:
                opened = sum(p["streams"] for p in points[-1:])
                out = workdir / f"wrk-{allocator}-{want}.out"
                wrks.append((start_wrk(url, script, want - opened, out), out))
                ramp_s = wait_held(children, upstream_port, want, plan, [w for w, _ in wrks])
                time.sleep(plan.settle_s)
                point = {
                    "streams": int(upstream_call(upstream_port, "GET", "/bench/held")),
                    "rss_mb": rss_mb(gateway.pid),
                    "gateway_fds": open_fds(gateway.pid),
                    "ramp_s": ramp_s,
                }
                points.append(point)
                print(
                    f"    {point['streams']} streams open: {point['rss_mb']:.0f} MB RSS, "
                    f"{point['gateway_fds']} fds, ramp {ramp_s:.0f} s",
                    flush=True,
                )
        finally:
            upstream_call(upstream_port, "POST", "/bench/release")
            time.sleep(2.0)  # the held streams finish; wrk's connections go on a moment
            summaries = [stop_wrk(w, out) for w, out in wrks]
        children.check_alive()
    first, last = points[0], points[-1]
    slope_kb = (last["rss_mb"] - first["rss_mb"]) * 1024 / (last["streams"] - first["streams"])
    at_target = last["rss_mb"] + (TARGET_STREAMS - last["streams"]) * slope_kb / 1024
    errors = sum(
        s[k]
        for s in summaries
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors")
    )
    return {
        "allocator": allocator,
        "idle_mb": idle,
        "points": points,
        "kb_per_stream": slope_kb,
        "rss_at_target_mb": at_target,
        "completed_streams": sum(s["requests"] for s in summaries),
        "errors": errors,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(
        "| allocator | idle | "
        + " | ".join(f"{p['streams']:,} open" for p in results[0]["points"])
        + " | per open stream | at 10,000 |"
    )
    print("|---" * (4 + len(results[0]["points"])) + "|")
    for r in results:
        cells = [f"{p['rss_mb']:.0f} MB" for p in r["points"]]
        print(
            f"| {r['allocator']} | {r['idle_mb']:.0f} MB | "
            + " | ".join(cells)
            + f" | {r['kb_per_stream']:.1f} KB | {r['rss_at_target_mb']:.0f} MB |"
        )
    for r in results:
        fds = ", ".join(f"{p['gateway_fds']}" for p in r["points"])
        print(
            f"{r['allocator']}: gateway fds at each point {fds}; "
            f"{r['completed_streams']} streams completed after the release, {r['errors']} errors"
        )
    last = results[0]["points"][-1]["streams"]
    if last < TARGET_STREAMS:
        print(
            f"10,000: RSS at {last:,} open plus {TARGET_STREAMS - last:,} x the slope "
            f"(the fd limit caps one process below 10,000)"
        )
    shipped = results[0]
    verdict = "PASS" if shipped["rss_at_target_mb"] < TARGET_MB else "MISS"
    print(
        f"target: {TARGET_STREAMS:,} streams under {TARGET_MB:.0f} MB RSS "
        f"({shipped['allocator']}, as shipped): {verdict} ({shipped['rss_at_target_mb']:.0f} MB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 and 2,000 streams")
    parser.add_argument("--points", help="streams open at the two points, e.g. 2000,9950")
    parser.add_argument("--allocators", default=",".join(ALLOCATORS), help="malloc,pymalloc")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "streams_memory.json")
    args = parser.parse_args()
    plan = QUICK if args.quick else Plan()
    if args.points:
        points = tuple(int(n) for n in args.points.split(","))
        if len(points) < 2 or list(points) != sorted(set(points)):
            parser.error("--points: two or more increasing numbers")
        plan = Plan(points, plan.quiet_s, plan.settle_s, plan.stuck_s)
    allocators = [a for a in args.allocators.split(",") if a]
    if not set(allocators) <= set(ALLOCATORS):
        parser.error(f"--allocators: from {', '.join(ALLOCATORS)}")
    stop_on_sigterm()
    ensure_wrk()

    def run(workdir: Path) -> list[dict[str, Any]]:
        return [measure(workdir, plan, allocator) for allocator in allocators]

    results = run_in_tempdir("gateway-streams-memory-bench-", run)
    print_table(results)
    write_results(
        args.out,
        {"plan": plan.__dict__, "results": results, "date": time.strftime("%Y-%m-%d")},
    )


if __name__ == "__main__":
    main()
