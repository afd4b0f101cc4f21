"""Instructions per request of the bare relay and of the gateway, counted by callgrind.

    .venv/bin/python bench/instructions.py [--requests N] [--gateway-root PATH] [--out PATH]

A steady yardstick where `perf stat -e instructions:u` is not available: the same fake upstream
as relay_bench.py (run natively), and the bare relay, then the gateway, each run under
`valgrind --tool=callgrind --instr-atstart=no`. Valgrind runs each server without
instrumentation through start-up and a warm-up; then instrumentation is switched on, and for
each measurement the counters are zeroed (`callgrind_control --zero`), a fixed number of
requests is sent, and the counters are dumped (`callgrind_control --dump`). The dump's total
of instructions executed (Ir: user space, every thread of the process) divided by the number of
requests is the figure: non-streaming chat completions, then streams. Start-up and warm-up are
never counted. `--gateway-root` measures another checkout of the gateway (e.g. a worktree of
an older commit) with this checkout's benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from subprocess import Popen
from typing import Any

import aiohttp
from _common import HOST, free_port, run
from _harness import GATEWAY_CONFIG, run_in_tempdir, start_redis, stop_on_sigterm, write_results
from _launch import BENCH_DIR, PROJECT_DIR, BenchFailed, Children, run_to_end
from _loadgen import HEADERS, Samples, Sender, chat_sender, stream_sender

MODES = ("chat", "stream")  # non-streaming chat completions, then streams


@dataclass(frozen=True)
class Plan:
    requests: int = 2000  # counted, per mode
    warmup: int = 200  # per mode, uninstrumented, before anything is counted
    concurrency: int = 8
    idle_s: float = 5.0  # an idle window, counted the same way: the background's own cost
    settle_s: float = 1.0  # after the last answer, before the dump: work done after answering
    start_timeout_s: float = 300.0  # a server's start-up under valgrind, until it answers
    phase_timeout_s: float = 900.0  # one warm-up or one measurement, all its requests
    request_timeout_s: float = 120.0
    control_timeout_s: float = 120.0  # one callgrind_control command


@dataclass(frozen=True)
class Server:
    """One server to count: how to start it, where it listens, what model to ask it for."""

    name: str
    argv: list[str]
    port: int
    model: str
    health_path: str | None
    cwd: Path
    env: dict[str, str]
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request


# --- valgrind ------------------------------------------------------------------------------


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BenchFailed(f"{name} not found on PATH (apt-get install valgrind)")
    return path


def under_callgrind(out_file: Path, argv: list[str]) -> list[str]:
    """`argv` under callgrind, uninstrumented until `callgrind_control --instr=on`. Collection
    is left on (the default): with `--collect-atstart=no` nothing is ever counted, since
    callgrind_control cannot switch collection on; uninstrumented code is not counted anyway."""
    return [
        tool("valgrind"),
        "--tool=callgrind",
        "--instr-atstart=no",
        "--vgdb=yes",  # callgrind_control talks to the process through valgrind's gdbserver
        f"--callgrind-out-file={out_file}",
        "--",
        *argv,
    ]


def control(proc: Popen[bytes], option: str, timeout_s: float) -> None:
    """One callgrind_control command to a running server; fails unless it says OK."""
    if proc.poll() is not None:
        raise BenchFailed(f"process {proc.pid} exited with {proc.returncode} under valgrind")
    argv = [tool("callgrind_control"), option, str(proc.pid)]
    try:
        code, out, err = run_to_end(argv, timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise BenchFailed(f"callgrind_control {option} got no answer in {timeout_s:g}s") from exc
    if code != 0 or b"OK" not in out:
        text = (out + err).decode(errors="replace").strip()
        raise BenchFailed(f"callgrind_control {option} {proc.pid} failed ({code}): {text}")


def dump_files(out_file: Path) -> set[Path]:
    """The numbered dumps (`<out>.1`, `<out>.2`, ...) callgrind_control --dump has written."""
    return set(out_file.parent.glob(out_file.name + ".*"))


def read_ir(dump: Path, timeout_s: float) -> int:
    """The dump's total Ir (its `summary:` line, in the order of its `events:` line)."""
    deadline = time.monotonic() + timeout_s
    while True:
        events: list[str] = []
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("summary:") and events:
                return int(line.split()[1:][events.index("Ir")])
        if time.monotonic() > deadline:
            raise BenchFailed(f"no summary line in {dump}")
        time.sleep(0.2)


def dump(proc: Popen[bytes], out_file: Path, plan: Plan) -> tuple[int, Path]:
    """Dump the counters; the new dump's total Ir and its path."""
    before = dump_files(out_file)
    control(proc, "--dump", plan.control_timeout_s)
    deadline = time.monotonic() + plan.control_timeout_s
    while not (new := dump_files(out_file) - before):
        if time.monotonic() > deadline:
            raise BenchFailed(f"callgrind_control --dump wrote no {out_file.name}.N")
        time.sleep(0.2)
    path = max(new, key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else -1)
    return read_ir(path, plan.control_timeout_s), path


# --- load ----------------------------------------------------------------------------------


def new_session(plan: Plan) -> aiohttp.ClientSession:
    """Keep-alive connections that outlast the pauses for callgrind_control, so that no new
    connection is opened (and counted) after the warm-up."""
    connector = aiohttp.TCPConnector(
        limit=plan.concurrency, limit_per_host=plan.concurrency, keepalive_timeout=3600
    )
    timeout = aiohttp.ClientTimeout(total=plan.request_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


async def send_all(
    session: aiohttp.ClientSession, server: Server, stream: bool, requests: int, plan: Plan
) -> float:
    """Exactly `requests` requests from `plan.concurrency` workers; their wall time. Fails on
    any error or a phase longer than `plan.phase_timeout_s`."""
    samples = Samples()
    url = f"http://{HOST}:{server.port}/v1/chat/completions"
    make = stream_sender if stream else chat_sender
    send: Sender = make(url, server.model, samples, {**HEADERS, **server.headers})
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send(session)

    started = time.perf_counter()
    try:
        async with asyncio.timeout(plan.phase_timeout_s):
            await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    except TimeoutError:
        raise BenchFailed(
            f"{server.name}: {requests} requests not done in {plan.phase_timeout_s:g}s "
            f"({samples.sent} sent)"
        ) from None
    if samples.errors or samples.sent != requests:
        raise BenchFailed(
            f"{server.name}: {samples.errors} of {samples.sent} requests failed; the first: "
            f"{samples.first_error}"
        )
    return time.perf_counter() - started


async def count(proc: Popen[bytes], server: Server, out_file: Path, plan: Plan) -> dict[str, Any]:
    """Warm up uninstrumented, switch instrumentation on, then count each mode and an idle
    window: zero, send (or wait), dump."""

    async def ctl(option: str) -> None:
        await asyncio.to_thread(control, proc, option, plan.control_timeout_s)

    async def dumped() -> tuple[int, Path]:
        return await asyncio.to_thread(dump, proc, out_file, plan)

    figures: dict[str, Any] = {}
    async with new_session(plan) as session:
        for mode in MODES:
            await send_all(session, server, mode == "stream", plan.warmup, plan)
        await ctl("--instr=on")
        for mode in MODES:
            print(f"  {server.name}: {plan.requests} {mode} requests counted", flush=True)
            await ctl("--zero")
            elapsed = await send_all(session, server, mode == "stream", plan.requests, plan)
            await asyncio.sleep(plan.settle_s)
            ir, path = await dumped()
            figures[mode] = {
                "requests": plan.requests,
                "instructions": ir,
                "per_request": ir / plan.requests,
                "elapsed_s": round(elapsed, 2),
                "dump": path.name,
            }
        await ctl("--zero")
        await asyncio.sleep(plan.idle_s)
        ir, path = await dumped()
        figures["idle"] = {
            "seconds": plan.idle_s,
            "instructions": ir,
            "per_second": ir / plan.idle_s,
            "dump": path.name,
        }
    return figures


# --- the servers ---------------------------------------------------------------------------


def child_env(pythonpath: Path | None = None) -> dict[str, str]:
    """The servers' environment: a fixed hash seed (set and dict layouts, and so the counts,
    do not change from run to run), and for the gateway its checkout first on the path."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return env


# `--auth`: the base config as it is (off), or with a key whose plan has no limits (open) or
# limits in memory set too high to refuse (limits): what auth and admission cost.
AUTH_CONFIGS = {
    "off": "",
    "open": "plans: {p: {}}\nkeys: [{name: k, key: sk-bench-key, plan: p}]\n",
    "limits": (
        "plans: {p: {rpm: 100000000, tpm: 1000000000, max_concurrent: 100000}}\n"
        "keys: [{name: k, key: sk-bench-key, plan: p}]\nlimits: {backend: memory}\n"
    ),
    # The same limits kept in a private redis-server (started by the bench), quota leases on.
    "redis": (
        "plans: {p: {rpm: 100000000, tpm: 1000000000, max_concurrent: 100000}}\n"
        "keys: [{name: k, key: sk-bench-key, plan: p}]\n"
        'limits: {backend: redis, redis_url: "redis://%(host)s:%(redis_port)d/0"}\n'
    ),
}


def gateway_server(
    root: Path, workdir: Path, upstream_port: int, auth: str = "off", redis_port: int = 0
) -> tuple[Server, str]:
    """`python -m gateway serve` importing the gateway from `root`: run in `workdir` with
    `root` first on PYTHONPATH, ahead of the virtualenv's editable install (whose finder comes
    last). Checked: the package really comes from `root`, and `root`'s gateway accepts the
    config. Returns the server and where its package lives."""
    env = child_env(root)
    # What `gateway serve` would choose by re-running itself (gateway.pipeline.memory), set
    # here so that it need not: valgrind does not follow the re-run into the new program.
    env.setdefault("PYTHONMALLOC", "malloc")
    python = sys.executable
    code, out, err = run_to_end(
        [python, "-c", "import gateway; print(gateway.__file__)"], 120, workdir, env
    )
    where = Path(out.decode().strip()).resolve()
    if code != 0 or not where.is_relative_to(root / "gateway"):
        raise BenchFailed(
            f"python imports the gateway from {where}, not from {root}: {err.decode()[-1000:]}"
        )
    config = workdir / "gateway.yaml"
    config.write_text(
        GATEWAY_CONFIG.format(host=HOST, upstream_port=upstream_port)
        + AUTH_CONFIGS[auth] % {"host": HOST, "redis_port": redis_port}
    )
    code, out, err = run_to_end(
        [python, "-m", "gateway", "check-config", "--config", str(config)], 120, workdir, env
    )
    if code != 0:
        raise BenchFailed(f"gateway check-config refused the config:\n{(out + err).decode()}")
    port = free_port()
    argv = [python, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
    headers = {"Authorization": "Bearer sk-bench-key"} if auth != "off" else {}
    server = Server("gateway", argv, port, "fast", "/healthz", workdir, env, headers)
    return server, str(where.parent)


def relay_server(upstream_port: int) -> Server:
    port = free_port()
    argv = [sys.executable, str(BENCH_DIR / "_servers.py"), "relay", "--port", str(port)]
    argv += ["--upstream-port", str(upstream_port)]
    return Server("relay", argv, port, "bench-model", None, PROJECT_DIR, child_env())


def measure(children: Children, server: Server, workdir: Path, plan: Plan) -> dict[str, Any]:
    """Start `server` under callgrind, count, stop it."""
    out_file = workdir / f"{server.name}.callgrind"
    started = time.monotonic()
    proc = children.start(
        server.name,
        under_callgrind(out_file, server.argv),
        log=workdir / f"{server.name}.stderr",
        cwd=server.cwd,
        env=server.env,
    )
    children.wait_ready(proc, server.port, server.health_path, plan.start_timeout_s)
    print(
        f"  {server.name}: ready under valgrind after {time.monotonic() - started:.0f}s; "
        f"warming up ({plan.warmup} of each, uninstrumented)",
        flush=True,
    )
    try:
        figures = run(count(proc, server, out_file, plan))
    except BenchFailed:
        children.check_alive()  # a server that died is the reason: say so, with its log
        raise
    children.check_alive()
    children.stop(proc)
    figures["wall_s"] = round(time.monotonic() - started, 1)
    return figures


def git(root: Path, *args: str) -> str:
    """Read-only git (no optional locks: not even the index's stat cache is refreshed)."""
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def run_all(
    plan: Plan, root: Path, with_relay: bool, keep: Path | None, workdir: Path, auth: str = "off"
) -> dict[str, Any]:
    for name in ("valgrind", "callgrind_control"):
        tool(name)  # missing tools fail before anything starts
    results: dict[str, Any] = {}
    with Children() as children:
        up_port = free_port()
        upstream = children.start(
            "upstream",
            [sys.executable, str(BENCH_DIR / "_servers.py"), "upstream", "--port", str(up_port)],
            log=workdir / "upstream.stderr",
        )
        children.wait_ready(upstream, up_port)
        redis_port = 0
        if auth == "redis":
            redis_port = free_port()
            start_redis(children, tool("redis-server"), redis_port, workdir)
        gateway, package = gateway_server(root, workdir, up_port, auth, redis_port)
        print(f"gateway code: {package}", flush=True)
        servers = ([relay_server(up_port)] if with_relay else []) + [gateway]
        for server in servers:
            results[server.name] = measure(children, server, workdir, plan)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for dump_file in workdir.glob("*.callgrind.*"):
            shutil.copy2(dump_file, keep / dump_file.name)
    return {"results": results, "gateway_package": package}


# --- the report ----------------------------------------------------------------------------


def _k(value: float) -> str:
    return f"{value / 1000:.1f}k"


def print_report(report: dict[str, Any]) -> None:
    results, plan = report["results"], report["plan"]
    names = list(results)
    env = report["environment"]
    dirty = " + uncommitted changes" if env["gateway_uncommitted_changes"] else ""
    print(
        f"\nInstructions per request (callgrind Ir: user space, all threads), "
        f"{plan['requests']} requests per mode at concurrency {plan['concurrency']}; "
        f"gateway at {env['gateway_commit'] or '?'}{dirty} ({env['gateway_root']})"
    )
    header = ["mode", *names] + (["gateway / relay"] if len(names) == 2 else [])
    rows = []
    for mode in MODES:
        per = [results[name][mode]["per_request"] for name in names]
        ratio = [f"{per[1] / per[0]:.3f}x"] if len(names) == 2 else []
        rows.append([mode, *map(_k, per), *ratio])
    idle = [f"{results[name]['idle']['per_second']:,.0f}/s" for name in names]
    rows.append(["idle (per second)", *idle] + ([""] if len(names) == 2 else []))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        print("  ".join(cells))
    # The idle rate says how much the counts owe to timers rather than to requests.
    for name in names:
        r = results[name]
        window = sum(r[m]["elapsed_s"] for m in MODES) + len(MODES) * plan["settle_s"]
        share = r["idle"]["per_second"] * window / sum(r[m]["instructions"] for m in MODES)
        print(
            f"{name}: background while idle {r['idle']['per_second']:,.0f} instructions/s, "
            f"at most {share:.2%} of the counts; counted windows {window:.0f}s, "
            f"whole run {r['wall_s']:.0f}s"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests", type=int, default=Plan.requests, help="counted requests per mode"
    )
    parser.add_argument("--warmup", type=int, default=Plan.warmup, help="per mode")
    parser.add_argument("--concurrency", type=int, default=Plan.concurrency)
    parser.add_argument(
        "--gateway-root",
        type=Path,
        default=PROJECT_DIR,
        help="the checkout whose gateway/ package to run (default: this one)",
    )
    parser.add_argument("--no-relay", action="store_true", help="count the gateway only")
    parser.add_argument(
        "--auth",
        choices=sorted(AUTH_CONFIGS),
        default="off",
        help="off: no keys (the default, comparable across commits); open: a key without "
        "limits; limits: a key with memory limits that never refuse; redis: the same limits "
        "in a private redis-server",
    )
    parser.add_argument("--start-timeout", type=float, default=Plan.start_timeout_s, help="seconds")
    parser.add_argument(
        "--keep-dumps", type=Path, help="copy the callgrind dumps here (for callgrind_annotate)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "results" / "instructions-latest.json",
        help="results JSON",
    )
    args = parser.parse_args()
    if args.requests < 1 or args.warmup < 0 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be positive, --warmup not negative")
    root: Path = args.gateway_root.resolve()
    if not (root / "gateway" / "__init__.py").is_file():
        parser.error(f"{root} has no gateway/__init__.py")
    plan = Plan(
        requests=args.requests,
        warmup=args.warmup,
        concurrency=args.concurrency,
        start_timeout_s=args.start_timeout,
    )
    stop_on_sigterm()
    started = time.monotonic()
    measured = run_in_tempdir(
        "instructions-",
        lambda workdir: run_all(plan, root, not args.no_relay, args.keep_dumps, workdir, args.auth),
    )
    report = {
        "environment": {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "valgrind": subprocess.run(
                [tool("valgrind"), "--version"], capture_output=True, text=True, timeout=10
            ).stdout.strip(),
            "bench_commit": git(PROJECT_DIR, "rev-parse", "--short", "HEAD"),
            "gateway_root": str(root),
            "gateway_package": measured["gateway_package"],
            "gateway_commit": git(root, "rev-parse", "--short", "HEAD"),
            "gateway_uncommitted_changes": bool(git(root, "status", "--porcelain", "gateway")),
            "elapsed_s": round(time.monotonic() - started, 1),
            "auth": args.auth,
        },
        "plan": asdict(plan),
        "results": measured["results"],
    }
    print_report(report)
    write_results(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
