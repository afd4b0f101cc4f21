"""What every benchmark script does the same way: describe a target, start the gateway with a
config it has checked, run one load-generator process per measurement, take turns between the
targets in rounds, pool the rounds, and write the results file."""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import Popen
from types import FrameType
from typing import Any, TypeVar

import orjson
from _analysis import summarize
from _common import HOST, proc_status_kb, redis_call
from _launch import BENCH_DIR, BenchFailed, Children, run_to_end

T = TypeVar("T")
Raw = dict[str, dict[str, list[dict[str, Any]]]]  # target -> scenario -> one result per round


@dataclass(frozen=True)
class Target:
    """Where the load generator sends requests, what it sends with them, and which processes'
    CPU use (and which Redis's commands) to report."""

    name: str
    port: int
    model: str
    watch_pids: dict[str, int]
    headers: dict[str, str] = field(default_factory=dict)
    redis_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1/chat/completions"


# The gateway every benchmark runs: one OpenAI-compatible provider (the fake upstream), one
# model, a tier `fast`; no access log. A str.format template (host, upstream_port).
GATEWAY_CONFIG = """\
server: {{host: {host}, port: 0, log_level: warning, shutdown_grace_s: 1}}
providers:
  up: {{type: openai, base_url: "http://{host}:{upstream_port}/v1"}}
models:
  bench-model: {{provider: up, model: bench-model}}
tiers:
  fast: [bench-model]
"""


def check_config(path: Path) -> None:
    """`gateway check-config`: a config the gateway refuses stops the benchmark at once, with
    the gateway's own explanation."""
    code, out, err = run_to_end(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(path)], 60
    )
    if code != 0:
        raise BenchFailed(
            f"gateway check-config refused {path.name}:\n{out.decode()}{err.decode()}"
        )


def start_gateway(
    children: Children,
    name: str,
    config: Path,
    port: int,
    workdir: Path,
    health_path: str = "/healthz",
    env: dict[str, str] | None = None,
) -> Popen[bytes]:
    """`python -m gateway serve` on `port` (in `env`, default this process's environment),
    waited for until `health_path` answers 200.

    Each gateway runs in a folder of its own under `workdir`: the files its config names by
    relative paths (the usage JSONL) are its own and go with the run. In the caller's folder
    every target of every run appended to one usage file in the checkout, and each start
    read all of it back (the usage totals are rebuilt from it), slower run after run."""
    home = workdir / name
    home.mkdir(exist_ok=True)
    gateway = children.start(
        name,
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)],
        log=workdir / f"{name}.stderr",
        cwd=home,
        env=env,
    )
    children.wait_ready(gateway, port, health_path=health_path)
    return gateway


def load(target: Target, spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement by a fresh load-generator process; its JSON result."""
    spec = {
        "url": target.url,
        "model": target.model,
        "watch_pids": target.watch_pids,
        "headers": target.headers,
        "redis_port": target.redis_port,
        **spec,
    }
    argv = [sys.executable, str(BENCH_DIR / "_loadgen.py"), orjson.dumps(spec).decode()]
    code, out, err = run_to_end(argv, timeout_s=300)
    if code != 0:
        raise BenchFailed(f"load generator failed on {target.name}:\n{err.decode()[-2000:]}")
    result: dict[str, Any] = orjson.loads(out)
    return result


def measure_rounds(
    targets: tuple[Target, ...],
    specs: Mapping[str, dict[str, Any]],
    rounds: int,
    only: Mapping[str, Collection[str]] | None = None,
) -> Raw:
    """Every measurement against every target, in rounds that take turns between the targets
    (a shared VM's speed drifts by tens of percent over a minute; taking turns spreads that
    drift over all targets instead of charging it to whichever ran last). `only` limits a
    scenario to some targets by name. Returns each round's raw result."""
    raw: Raw = {t.name: {} for t in targets}
    for round_no in range(1, rounds + 1):
        print(f"  round {round_no}/{rounds}:", end="", flush=True)
        for scenario, spec in specs.items():
            print(f" {scenario}", end="", flush=True)
            for target in targets:
                if only is not None and scenario in only and target.name not in only[scenario]:
                    continue
                raw[target.name].setdefault(scenario, []).append(load(target, spec))
        print(flush=True)
    return raw


def pooled(raw: Raw) -> dict[str, dict[str, Any]]:
    """The rounds of every measurement pooled (see `_analysis.summarize`)."""
    return {
        name: {scenario: summarize(rounds) for scenario, rounds in by_scenario.items()}
        for name, by_scenario in raw.items()
    }


def memory_kb(pid: int) -> dict[str, int | None]:
    return {"rss_kb": proc_status_kb(pid, "VmRSS"), "hwm_kb": proc_status_kb(pid, "VmHWM")}


def _sigterm(signum: int, frame: FrameType | None) -> None:
    # SIGTERM ends the run like Ctrl-C: as an exception, so that Children.__exit__ stops the
    # servers and the temporary directory is removed.
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, _sigterm)


def run_in_tempdir(prefix: str, run: Callable[[Path], T]) -> T:
    """`run` with a fresh working directory, removed after. An abort (`BenchFailed`) or
    Ctrl-C ends the script with its reason and exit code 1 or 130; the servers `run` started
    are stopped by then."""
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            return run(Path(tmp))
    except BenchFailed as exc:
        print(f"\nbenchmark aborted: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        raise SystemExit(130) from None


def write_results(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nresults written to {path}")


def redis_limits_section(redis_port: int) -> str:
    """The `limits:` section (flow style) of a gateway limited on the private Redis at
    `redis_port`. `on_backend_error: deny`: were Redis ever unreachable, requests fail (and are
    counted as errors) instead of being served without asking it, which would flatter it."""
    return f'{{backend: redis, redis_url: "redis://{HOST}:{redis_port}/0", on_backend_error: deny}}'


def start_redis(children: Children, binary: str, port: int, workdir: Path) -> Popen[bytes]:
    """A private, empty, non-persistent Redis for this run only."""
    data = workdir / "redis-data"
    data.mkdir()
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(data)]  # fmt: skip
    log = workdir / "redis.log"
    redis = children.start("redis-server", argv, log=log, stdout=log)
    children.wait_ready(redis, port)
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis_call(port, "PING") == "PONG":
                return redis
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise BenchFailed("redis-server accepts connections but does not answer PING")
        time.sleep(0.05)
