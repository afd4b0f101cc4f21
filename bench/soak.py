"""The reliability soak: the gateway as a real process, with Redis limits, in front of a fake
upstream whose every fault a request can pick (`fault:<name>` in its prompt), driven through
the bad days a production gateway meets, and a table of what held.

Runs, each bounded in time:
- upstream faults: concurrent clients, each request meeting a random fault, streamed or not,
  on a chain that falls back to the mock and on one that does not;
- clients leaving: streams dropped by their clients at random points;
- Redis frozen: SIGSTOP on redis-server while requests flow (`on_backend_error: allow`);
- SIGTERM with streams running, then SIGKILL with streams holding concurrency leases.

    python bench/soak.py            # about a minute on two cores
    python bench/soak.py --quick    # a few seconds per run (the test suite runs this)

Exit status 0 when everything held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from tests.fakes.openai_upstream import FAULTS, SECRET_ECHOED, FakeOpenAI  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

KEY = "gw-soak-key"
CAPPED_KEY = "gw-soak-capped"
CAPPED_CONCURRENCY = 5
LEASE_TTL_S = 3.0
GRACE_S = 1.0
# Faults a chain ending at the mock recovers from before the answer starts.
RECOVERED = {"none", "status_500", "status_503", "status_429", "reset_before_headers"}
RECOVERED |= {"slow_headers", "stall_first_event"}


@dataclass
class Plan:
    fault_requests: int = 3000
    concurrency: int = 64
    leaving_streams: int = 500
    frozen_requests: int = 1000
    term_streams: int = 200


QUICK = Plan(
    fault_requests=150, concurrency=16, leaving_streams=20, frozen_requests=60, term_streams=8
)


@dataclass
class Outcome:
    run: str
    requests: int
    held: list[str] = field(default_factory=list)  # what was checked and held
    broken: list[str] = field(default_factory=list)  # what did not

    def check(self, ok: bool, what: str) -> None:
        (self.held if ok else self.broken).append(what)


# --- the gateway process ----------------------------------------------------------------------


def soak_config(upstream_url: str, redis_url: str, usage: Path) -> dict[str, Any]:
    return {
        "server": {
            "host": "127.0.0.1",
            "shutdown_grace_s": GRACE_S,
            "body_timeout_s": 5,
            # Every client of the soak is on 127.0.0.1: no per-address cap on connections
            # still sending their request (it is tested on its own, test_protocol_errors.py).
            "max_pending_per_address": 0,
        },
        "redis": {"url": redis_url},
        "providers": {
            "up": {"type": "openai", "base_url": upstream_url, "api_key": "sk-soak-upstream"},
            "mock": {"type": "mock"},
        },
        "models": {
            "flaky": {
                "provider": "up",
                "model": "flaky-id",
                "timeout": {"connect": 1, "first_token": 1.5, "total": 4},
            },
            "mock-model": {"provider": "mock"},
        },
        # `mocked`: streams of a chosen length and pace (mock directives in the prompt).
        "tiers": {"fast": ["flaky", "mock-model"], "direct": ["flaky"], "mocked": ["mock-model"]},
        "routing": {
            "default_tier": "fast",
            "retries": 0,
            "cooldown": {"failures": 1_000_000, "seconds": 0},  # every request meets its fault
        },
        "limits": {"backend": "redis", "on_backend_error": "allow", "lease_ttl_s": LEASE_TTL_S},
        "plans": {
            "soak": {"tiers": ["fast", "direct", "mocked"], "rpm": 1_000_000},
            "capped": {"tiers": ["mocked"], "max_concurrent": CAPPED_CONCURRENCY},
        },
        "keys": [
            {"name": "soak", "key": KEY, "plan": "soak"},
            {"name": "capped", "key": CAPPED_KEY, "plan": "capped"},
        ],
        "usage": {"sinks": {"jsonl": str(usage)}},
    }


class Gateway:
    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.config_path = folder / "gateway.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = folder / "gateway.log"
        self.usage = Path(config["usage"]["sinks"]["jsonl"])
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.expected_records = 0  # what the runs so far should have left in the usage file

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.port = free_port()
        with self.log.open("ab") as sink:
            argv = [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path)]
            # Started from the event loop on purpose: Popen returns at once (no waiting).
            self.process = subprocess.Popen(  # noqa: ASYNC220
                [*argv, "--port", str(self.port)],
                cwd=PROJECT_DIR,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        async with client_session() as http:
            for _ in range(300):
                try:
                    async with http.get(self.url + "/healthz") as answer:
                        if answer.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError("the gateway did not start:\n" + self.log.read_text()[-2000:])

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    async def exited(self, within_s: float) -> int | None:
        assert self.process is not None
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return self.process.returncode
            await asyncio.sleep(0.05)
        return None

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            if await self.exited(10) is None:
                self.process.kill()
                self.process.wait()

    def records(self) -> list[dict[str, Any]]:
        if not self.usage.exists():
            return []
        return [json.loads(line) for line in self.usage.read_text().splitlines() if line]

    async def settled_records(self) -> int:
        """The number of records once the earlier runs' are all written (they are batched)."""
        return len(await self.records_reach(self.expected_records))

    async def records_reach(self, count: int, within_s: float = 5) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within_s
        while True:
            found = self.records()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)

    async def in_flight(self, http: aiohttp.ClientSession) -> float:
        async with http.get(self.url + "/metrics") as answer:
            text = await answer.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("gateway_in_flight_requests{")
        )

    async def settles(self, http: aiohttp.ClientSession, within_s: float = 5) -> bool:
        """Nothing in flight within `within_s`: every request's lease was given back."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if await self.in_flight(http) == 0:
                return True
            await asyncio.sleep(0.05)
        return False


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- what a client sees -----------------------------------------------------------------------


def chat(fault: str, *, tier: str = "fast", stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": tier,
        "messages": [{"role": "user", "content": f"hello fault:{fault}"}],
    }
    if stream:
        body["stream"] = True
    return body


def client_session() -> aiohttp.ClientSession:
    """No cap on connections (aiohttp's default is 100): every stream of a run at once."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)
    )


def mocked(prompt: str, *, stream: bool = True) -> dict[str, Any]:
    """A request the mock answers: its length and pace set by directives in `prompt`."""
    return {"model": "mocked", "stream": stream, "messages": [{"role": "user", "content": prompt}]}


def headers(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def problems(status: int, body: bytes, stream: bool) -> list[str]:
    """What is wrong with one answer, as a client would judge it."""
    found: list[str] = []
    text = body.decode(errors="replace")
    if SECRET_ECHOED in text or "sk-soak-upstream" in text:
        found.append("a secret reached the client")
    if status == 500:
        found.append("a 500")
    if status >= 400:
        try:
            error = json.loads(body)["error"]
            assert {"message", "type", "param", "code"} <= set(error)
        except (ValueError, KeyError, TypeError, AssertionError):
            found.append(f"an error not in OpenAI's shape: {text[:120]!r}")
        return found
    if not stream:
        try:
            json.loads(body)
        except ValueError:
            found.append(f"an answer that is not JSON: {text[:120]!r}")
        return found
    # CRLF line ends are SSE too (an upstream's own, relayed as its bytes).
    events = [e for e in text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    if not events:
        return [*found, "an empty stream"]
    ends_in_error = '"error"' in events[-1]
    if events[-1] != "data: [DONE]" and not ends_in_error:
        found.append(f"a stream that ends without [DONE] or an error: {events[-1][:120]!r}")
    for event in events:
        data = "".join(line[5:].lstrip() for line in event.split("\n") if line.startswith("data:"))
        if data and data != "[DONE]":
            try:
                json.loads(data)
            except ValueError:
                # An upstream's own event the gateway had no need to read is relayed as it
                # came; the stream must then end in an error, not as if it were whole.
                if not ends_in_error:
                    found.append(f"an event that is not JSON: {event[:120]!r}")
    return found


def finished_cleanly(body: bytes) -> bool:
    return body.rstrip().endswith(b"data: [DONE]") and b'"error"' not in body


# --- the runs ---------------------------------------------------------------------------------


async def upstream_faults(gateway: Gateway, plan: Plan) -> Outcome:
    outcome = Outcome("upstream faults (every fault, streamed or not, two chains)", 0)
    faults = [*FAULTS, "none", "none", "none"]
    rng = random.Random(7)
    jobs = [
        (rng.choice(faults), rng.choice(["fast", "direct"]), rng.random() < 0.5)
        for _ in range(plan.fault_requests)
    ]
    before = await gateway.settled_records()
    gateway.expected_records = before + len(jobs)
    wrong: list[str] = []
    unrecovered: list[str] = []
    queue: asyncio.Queue[tuple[str, str, bool]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def client(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            fault, tier, stream = queue.get_nowait()
            body = chat(fault, tier=tier, stream=stream)
            try:
                async with http.post(
                    gateway.url + "/v1/chat/completions", json=body, headers=headers()
                ) as answer:
                    data = await answer.read()
                    status = answer.status
            except aiohttp.ClientError as exc:
                wrong.append(f"{fault}/{tier}/{stream=}: the connection broke ({exc})")
                continue
            wrong.extend(f"{fault}/{tier}/{stream=}: {p}" for p in problems(status, data, stream))
            recovered = status == 200 and not (stream and not finished_cleanly(data))
            if tier == "fast" and fault in RECOVERED and not recovered:
                unrecovered.append(f"{fault}/{stream=}: {status} {data[:100]!r}")

    async with client_session() as http:
        await asyncio.gather(*(client(http) for _ in range(plan.concurrency)))
        outcome.requests = len(jobs)
        outcome.check(not wrong, f"every answer well formed, no 500, no secret ({len(wrong)} not)")
        outcome.check(
            not unrecovered,
            f"faults before the first event fell back to the next model ({len(unrecovered)} not)",
        )
        outcome.check(await gateway.settles(http), "nothing left in flight")
    records = await gateway.records_reach(before + len(jobs))
    outcome.check(
        len(records) - before == len(jobs),
        f"one usage record per request ({len(records) - before})",
    )
    outcome.broken += (wrong + unrecovered)[:5]
    return outcome


async def clients_leaving(gateway: Gateway, plan: Plan) -> Outcome:
    outcome = Outcome("clients leaving streams at random points", plan.leaving_streams)
    before = await gateway.settled_records()
    gateway.expected_records = before + plan.leaving_streams
    rng = random.Random(11)

    async def leaver(http: aiohttp.ClientSession, events_read: int) -> None:
        body = mocked("tell me mock:pace_ms=20 mock:tokens=40")
        async with http.post(
            gateway.url + "/v1/chat/completions", json=body, headers=headers()
        ) as answer:
            for _ in range(events_read):
                await answer.content.readuntil(b"\n\n")
        # leaving the block closes the connection mid-stream

    async with client_session() as http:
        await asyncio.gather(
            *(leaver(http, rng.randint(0, 6)) for _ in range(plan.leaving_streams)),
            return_exceptions=True,
        )
        outcome.check(await gateway.settles(http), "every lease given back (nothing in flight)")
    records = (await gateway.records_reach(before + plan.leaving_streams))[before:]
    outcome.check(
        len(records) == plan.leaving_streams, f"one usage record per stream ({len(records)})"
    )
    cut = sum(1 for record in records if record["status"] == 499)
    outcome.check(cut == len(records), f"each recorded as 499, the client's ({cut})")
    return outcome


async def redis_frozen(gateway: Gateway, redis: RedisServer, plan: Plan) -> Outcome:
    outcome = Outcome("Redis frozen (SIGSTOP) under on_backend_error: allow", 0)

    async def timed(
        http: aiohttp.ClientSession, count: int, at_least_s: float = 0
    ) -> tuple[list[float], list[int]]:
        latencies: list[float] = []
        statuses: list[int] = []
        until = time.monotonic() + at_least_s
        while len(latencies) < count or time.monotonic() < until:
            started = time.perf_counter()
            async with http.post(
                gateway.url + "/v1/chat/completions", json=chat("none"), headers=headers()
            ) as answer:
                await answer.read()
                statuses.append(answer.status)
            latencies.append(time.perf_counter() - started)
        return latencies, statuses

    log_before = gateway.log.stat().st_size
    async with client_session() as http:
        healthy, _ = await timed(http, plan.frozen_requests // 2)
        redis.pause()
        try:
            await timed(http, 3)  # the outage is noticed: the breaker opens
            # Longer than any snapshot the gateway keeps of Redis state (cooldowns: 1 s), so
            # every reader of Redis meets the outage, not only the limiter.
            frozen, statuses = await timed(http, plan.frozen_requests, at_least_s=2.5)
        finally:
            redis.resume()
    outcome.requests = len(healthy) + 3 + len(frozen)
    gateway.expected_records += outcome.requests
    added_ms = (statistics.median(frozen) - statistics.median(healthy)) * 1000
    outcome.check(all(s == 200 for s in statuses), "every request served while Redis is frozen")
    outcome.check(added_ms < 5, f"p50 added while frozen under 5 ms ({added_ms:.2f} ms)")
    with gateway.log.open("rb") as log:
        log.seek(log_before)
        written = log.read().decode(errors="replace")
    lines = [line for line in written.splitlines() if '"logger":"gateway.access"' not in line]
    outcome.check(
        len(lines) < 10, f"a few log lines for the outage, not one per request ({len(lines)})"
    )
    outcome.check("Traceback" not in written, "no traceback logged")
    return outcome


async def sigterm_with_streams(gateway: Gateway, plan: Plan) -> Outcome:
    outcome = Outcome("SIGTERM with streams running", plan.term_streams)
    before = await gateway.settled_records()
    gateway.expected_records = before + plan.term_streams
    ends: list[bytes] = []

    async def streamer(http: aiohttp.ClientSession, started: asyncio.Event) -> None:
        body = mocked("long mock:pace_ms=100 mock:tokens=200")
        async with http.post(
            gateway.url + "/v1/chat/completions", json=body, headers=headers()
        ) as answer:
            first = await answer.content.readuntil(b"\n\n")
            started.set()
            ends.append(first + await answer.read())

    async with client_session() as http:
        events = [asyncio.Event() for _ in range(plan.term_streams)]
        tasks = [asyncio.create_task(streamer(http, event)) for event in events]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 10)
        gateway.signal(signal.SIGTERM)
        code = await gateway.exited(GRACE_S + 5)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    broken = [r for r in results if isinstance(r, BaseException)]
    outcome.check(code == 0, f"the process exited cleanly within the grace period ({code})")
    outcome.check(not broken, f"every stream's body ended properly ({len(broken)} cut)")
    told = sum(1 for end in ends if b"shutting_down" in end)
    outcome.check(told == len(ends), f"each told in-band that the gateway shut down ({told})")
    records = gateway.records()[before:]
    statuses = {record["status"] for record in records}
    outcome.check(
        len(records) == plan.term_streams and statuses == {503},
        f"each recorded as 503 shutting_down ({len(records)} records, statuses {statuses})",
    )
    return outcome


async def sigkill_with_leases(gateway: Gateway) -> Outcome:
    """A replica killed while its streams hold concurrency leases in Redis: a new process (or
    another replica) admits that key again once the leases' TTL has passed, not never."""
    outcome = Outcome("SIGKILL with streams holding concurrency leases", CAPPED_CONCURRENCY)

    async def holder(http: aiohttp.ClientSession, started: asyncio.Event) -> None:
        body = mocked("hold mock:pace_ms=200 mock:tokens=200")
        async with http.post(
            gateway.url + "/v1/chat/completions", json=body, headers=headers(CAPPED_KEY)
        ) as answer:
            await answer.content.readuntil(b"\n\n")
            started.set()
            await answer.read()

    async with client_session() as http:
        events = [asyncio.Event() for _ in range(CAPPED_CONCURRENCY)]
        tasks = [asyncio.create_task(holder(http, event)) for event in events]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 10)
        gateway.signal(signal.SIGKILL)
        await gateway.exited(5)
        await asyncio.gather(*tasks, return_exceptions=True)
        killed_at = time.monotonic()
        await gateway.start()
        admitted_after: float | None = None
        while time.monotonic() - killed_at < LEASE_TTL_S + 5:
            async with http.post(
                gateway.url + "/v1/chat/completions",
                json=mocked("again", stream=False),
                headers=headers(CAPPED_KEY),
            ) as answer:
                await answer.read()
                if answer.status == 200:
                    admitted_after = time.monotonic() - killed_at
                    break
            await asyncio.sleep(0.1)
    outcome.check(
        admitted_after is not None and admitted_after < LEASE_TTL_S + 2,
        f"the key admitted again once the dead leases expired (lease_ttl_s {LEASE_TTL_S:g}; "
        f"after {admitted_after if admitted_after is None else round(admitted_after, 1)} s)",
    )
    return outcome


# --- the report -------------------------------------------------------------------------------


def print_table(outcomes: list[Outcome]) -> None:
    print("\n| run | requests | what held | result |")
    print("|---|---|---|---|")
    for outcome in outcomes:
        result = "held" if not outcome.broken else "FAILED: " + "; ".join(outcome.broken)
        print(f"| {outcome.run} | {outcome.requests} | {'; '.join(outcome.held)} | {result} |")


async def soak(plan: Plan) -> list[Outcome]:
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="gateway-soak-") as where:
        folder = Path(os.environ.get("SOAK_KEEP") or where)
        redis = RedisServer(folder)
        redis.start()
        upstream = FakeOpenAI()
        await upstream.start()
        gateway = Gateway(folder, soak_config(upstream.url, redis.url, folder / "usage.jsonl"))
        try:
            await gateway.start()
            runs: list[Callable[[], Awaitable[Outcome]]] = [
                lambda: upstream_faults(gateway, plan),
                lambda: clients_leaving(gateway, plan),
                lambda: redis_frozen(gateway, redis, plan),
                lambda: sigterm_with_streams(gateway, plan),
            ]
            for run in runs:
                started = time.monotonic()
                outcome = await run()
                outcomes.append(outcome)
                print(f"{outcome.run}: {time.monotonic() - started:.1f} s", file=sys.stderr)
            await gateway.start()  # SIGTERM ended it
            outcomes.append(await sigkill_with_leases(gateway))
        finally:
            await gateway.stop()
            await upstream.stop()
            redis.stop()
    return outcomes


def main() -> int:
    # The fake upstream resets connections on purpose; aiohttp would log each as an error.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per run")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    outcomes = asyncio.run(soak(QUICK if args.quick else Plan()))
    print_table(outcomes)
    return 0 if all(not outcome.broken for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
