"""USD budgets that hold: the worst-case cost is reserved in the same admission as rpm/tpm, so
concurrent requests (in one process, or in three sharing Redis) never spend past a budget;
settling gives back what a request did not use (a stream ended early too); a budget resets at
its period's boundary; refusals are OpenAI's exhausted-quota 429 and are counted."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.limits.base import Admission, Limiter, LimitSpec
from gateway.limits.budgets import BudgetCharge, period_end, period_id, to_nano
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis import RedisLimiter
from gateway.store.redis import connect
from tests.conftest import StartGateway, free_port
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.gateway_process import start_gateway_process, write_config
from tests.redis_server import RedisServer
from tests.usage_lines import wait_for_records

KEY = "gw-budget-key"
OTHER_KEY = "gw-budget-other"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Output only, $1 per million tokens, and 4 words answered to a max_tokens of 4: a request's
# worst case is exactly what it costs, $0.000004, so a budget of $0.00004 fits ten.
PRICE = {"input": 0, "output": 1.0}
COST = 4 / 1_000_000
BUDGET = 10 * COST
CHAT: dict[str, Any] = {
    "model": "fast",
    "max_tokens": 4,
    "messages": [{"role": "user", "content": "hi"}],
}


def budget_config(
    upstream_url: str,
    backend: str,
    redis_url: str = "",
    *,
    key_budget: dict[str, Any] | None = None,
    plan_budget: dict[str, Any] | None = None,
    budgets: dict[str, Any] | None = None,
    usage: Path | None = None,
) -> dict[str, Any]:
    timeout = {"connect": 1, "first_token": 5, "total": 30}
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {"up": {"type": "openai", "base_url": upstream_url}},
        "models": {"gpt": {"provider": "up", "timeout": timeout, "price": PRICE}},
        "tiers": {"fast": ["gpt"]},
        "routing": {"retries": 0},
        "plans": {"paid": {"budget": plan_budget} if plan_budget else {}},
        "keys": [
            {"name": "app", "key": KEY, "plan": "paid", "feature": "chat-api"}
            | ({"budget": key_budget} if key_budget else {}),
            {"name": "other", "key": OTHER_KEY, "plan": "paid", "feature": "search"},
        ],
        "limits": {"backend": backend, "on_backend_error": "deny"},
        "usage": {"features": ["chat-api", "search"]},
    }
    if budgets:
        raw["budgets"] = budgets
    if redis_url:
        raw["limits"]["redis_url"] = redis_url
    if usage:
        raw["usage"]["sinks"] = {"jsonl": str(usage)}
    return raw


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    if request.param == "memory":
        return "memory", ""
    server: RedisServer = request.getfixturevalue("redis_server")
    return "redis", server.url


@pytest.fixture
def exact_upstream(upstream: FakeOpenAI) -> FakeOpenAI:
    upstream.default = Behaviour(words=["a", "b", "c", "d"], prompt_tokens=3)
    return upstream


async def post(
    http: aiohttp.ClientSession, url: str, key: str = KEY, body: dict[str, Any] = CHAT
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.post(
        url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as answer:
        return answer.status, await answer.json(), dict(answer.headers)


async def test_fifty_concurrent_requests_never_spend_past_a_budget_that_fits_ten(
    exact_upstream: FakeOpenAI,
    backend: tuple[str, str],
    start_gateway: StartGateway,
    tmp_path: Path,
) -> None:
    usage = tmp_path / "usage.jsonl"
    raw = budget_config(
        exact_upstream.url, *backend, key_budget={"usd": BUDGET, "period": "day"}, usage=usage
    )
    gateway = await start_gateway(raw)
    exact_upstream.default.delay_s = 0.2  # all fifty are in flight together
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(post(http, gateway.url) for _ in range(50)))
    served = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] != 200]
    assert len(served) == 10
    for status, body, headers in refused:
        assert status == 429
        assert body["error"]["type"] == "insufficient_quota"
        assert body["error"]["code"] == "insufficient_quota"
        assert "key 'app'" in body["error"]["message"]
        assert headers["x-should-retry"] == "false"
        assert float(headers["x-gateway-budget-remaining-usd"]) == 0
    assert len(exact_upstream.requests) == 10  # a refused request never reaches an upstream
    remaining = sorted(float(h["x-gateway-budget-remaining-usd"]) for _, _, h in served)
    assert remaining == pytest.approx([i * COST for i in range(10)], abs=1e-12)
    records = await wait_for_records(usage, 50, polls=200)
    spent = sum(record["cost_usd"] for record in records)
    assert spent == pytest.approx(BUDGET, abs=1e-12) and spent <= BUDGET + 1e-12


async def test_the_sdk_raises_its_quota_error_and_the_refusal_is_counted(
    exact_upstream: FakeOpenAI, start_gateway: StartGateway
) -> None:
    raw = budget_config(exact_upstream.url, "memory", plan_budget={"usd": COST, "period": "month"})
    gateway = await start_gateway(raw)
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=KEY, max_retries=2
    ) as client:
        first = await client.chat.completions.with_raw_response.create(**CHAT)
        assert first.headers["x-gateway-budget-remaining-usd"] == "0"
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(**CHAT)
    assert refused.value.code == "insufficient_quota"
    assert "for this month; it resets at" in refused.value.message
    assert len(exact_upstream.requests) == 1  # x-should-retry: false, so the SDK did not retry
    async with (
        aiohttp.ClientSession() as http,
        http.get(gateway.url + "/metrics") as answer,
    ):
        metrics = await answer.text()
    assert 'gateway_budget_refusals_total{scope="key"}' in metrics


async def test_feature_and_total_budgets_cover_every_key(
    exact_upstream: FakeOpenAI, backend: tuple[str, str], start_gateway: StartGateway
) -> None:
    budgets = {
        "features": {"search": {"usd": 2 * COST, "period": "day"}},
        "total": {"usd": 5 * COST, "period": "total"},
    }
    gateway = await start_gateway(budget_config(exact_upstream.url, *backend, budgets=budgets))
    async with aiohttp.ClientSession() as http:
        other = [await post(http, gateway.url, OTHER_KEY) for _ in range(3)]
        assert [status for status, _, _ in other] == [200, 200, 429]
        assert "feature 'search'" in other[2][1]["error"]["message"]
        assert "x-gateway-budget-remaining-usd" not in other[0][2]  # no budget of its own
        mine = [await post(http, gateway.url) for _ in range(4)]
    assert [status for status, _, _ in mine] == [200, 200, 200, 429]
    assert "the gateway's total" in mine[3][1]["error"]["message"]
    assert "resets" not in mine[3][1]["error"]["message"]  # a total budget never does


async def test_an_error_and_a_stream_ended_early_give_back_what_they_did_not_spend(
    exact_upstream: FakeOpenAI, backend: tuple[str, str], start_gateway: StartGateway
) -> None:
    raw = budget_config(exact_upstream.url, *backend, key_budget={"usd": 1.0, "period": "day"})
    gateway = await start_gateway(raw)
    big = {**CHAT, "max_tokens": 400_000}  # reserves $0.40 of the $1
    async with aiohttp.ClientSession() as http:
        exact_upstream.next(Behaviour(status=500))
        status, _, _ = await post(http, gateway.url, body=big)
        assert status == 502
        exact_upstream.next(Behaviour(words=["w"] * 50, pace_s=0.05, prompt_tokens=3))
        async with http.post(
            gateway.url + "/v1/chat/completions", json={**big, "stream": True}, headers=AUTH
        ) as streaming:
            assert streaming.headers["x-gateway-budget-remaining-usd"] == "0.6"
            await streaming.content.readuntil(b"\n\n")
            await streaming.content.readuntil(b"\n\n")
        # The stream was cut after a couple of events: it is billed for what was sent (an
        # estimate, its usage never came), and the rest of its $0.40 is free again.
        for _ in range(100):
            status, _, headers = await post(http, gateway.url)
            left = float(headers["x-gateway-budget-remaining-usd"])
            if left > 0.99:
                break
            await asyncio.sleep(0.05)
    assert status == 200
    assert 0.99 < left < 1.0 - COST


# --- the period boundary, on an injected clock --------------------------------------------


class Clock:
    def __init__(self, at: float) -> None:
        self.now = at

    def __call__(self) -> float:
        return self.now


def day_budget(usd: float, period: str = "day") -> tuple[BudgetCharge, ...]:
    return (BudgetCharge("key", "app", to_nano(usd), period),)  # type: ignore[arg-type]


async def spend_until_refused(limiter: Limiter, charges: tuple[BudgetCharge, ...]) -> int:
    admitted = 0
    while True:
        admission: Admission = await limiter.admit("key:app", LimitSpec(), 0, charges, to_nano(1))
        if not admission.allowed:
            assert admission.limit == "budget" and admission.extra["budget_scope"] == "key"
            return admitted
        admitted += 1
        await limiter.settle("key:app", admission, None, to_nano(1))


@pytest.fixture
async def limiters(
    redis_server: RedisServer,
) -> AsyncIterator[Callable[[Clock], Limiter]]:
    clients = []

    def make(kind: str, clock: Clock) -> Limiter:
        if kind == "memory":
            return MemoryLimiter(wall_clock=clock)
        client = connect(redis_server.url)
        clients.append(client)
        return RedisLimiter(client, wall_clock=clock)

    yield make  # type: ignore[misc]
    for client in clients:
        await client.aclose()


@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest.mark.parametrize(
    ("period", "before", "after"),
    [
        ("day", "2026-12-07T23:59:59Z", "2026-12-08T00:00:00Z"),
        ("month", "2026-12-31T23:59:59Z", "2027-01-01T00:00:00Z"),
    ],
)
async def test_a_budget_resets_at_its_period_boundary(
    limiters: Any, kind: str, period: str, before: str, after: str
) -> None:
    moment = time.mktime(time.strptime(before, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    clock = Clock(moment)
    limiter = limiters(kind, clock)
    charges = day_budget(3.0, period)
    assert await spend_until_refused(limiter, charges) == 3
    clock.now += 0.5  # still the same period
    assert await spend_until_refused(limiter, charges) == 0
    assert period_end(period, clock.now) == after
    clock.now += 0.5  # the boundary
    assert period_id(period, clock.now) != period_id(period, clock.now - 1)  # type: ignore[arg-type]
    assert await spend_until_refused(limiter, charges) == 3


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_request_settled_after_the_boundary_corrects_the_old_period(
    limiters: Any, kind: str
) -> None:
    clock = Clock(time.mktime((2026, 12, 7, 23, 59, 59, 0, 0, 0)) - time.timezone)
    limiter = limiters(kind, clock)
    charges = day_budget(3.0)
    held = await limiter.admit("key:app", LimitSpec(), 0, charges, to_nano(2))
    assert held.allowed
    clock.now += 2  # the next day: a fresh budget, and the old request settles in the old day
    await limiter.settle("key:app", held, None, to_nano(1))
    assert await spend_until_refused(limiter, charges) == 3
    clock.now -= 2
    assert await spend_until_refused(limiter, charges) == 2  # 1 of the old day's 3 was spent


# --- three replicas sharing Redis -----------------------------------------------------------


async def test_three_replicas_never_spend_past_a_shared_budget(
    redis_server: RedisServer, exact_upstream: FakeOpenAI, tmp_path: Path
) -> None:
    raw = budget_config(
        exact_upstream.url,
        "redis",
        redis_server.url,
        budgets={"total": {"usd": BUDGET, "period": "month"}},
    )
    exact_upstream.default.delay_s = 0.2
    path = tmp_path / "config.yaml"
    write_config(path, raw)
    processes = []
    try:
        urls = []
        for _ in range(3):
            port = free_port()
            processes.append(await start_gateway_process(path, port))
            urls.append(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as http:
            answers = await asyncio.gather(*(post(http, urls[i % 3]) for i in range(50)))
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 10)
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 10 and statuses.count(429) == 40
    assert len(exact_upstream.requests) == 10
