"""GET /dashboard: the page shows usage, cost, cache hits, errors and fallbacks, drawn by a
real browser.

Traffic goes through the real openai client; headless Chromium loads the page from the
gateway, runs its script, and the numbers are read from the DOM it dumps.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, base_config
from tests.fakes.openai_upstream import FakeOpenAI

ADMIN_KEY = "gw-test-dashboard-admin"
PROMPT = "x" * 40  # the mock counts 4 characters a token: 10 prompt tokens
PROMPT_TOKENS = 10
COMPLETION_TOKENS = 16  # the mock's default answer length
MAIN_PRICE = {"input": 100.0, "output": 300.0}  # USD per million tokens
CHEAP_PRICE = {"input": 10.0, "output": 20.0}
CHROMIUM_TIMEOUT_S = 90


def cost(price: dict[str, float]) -> float:
    return (PROMPT_TOKENS * price["input"] + COMPLETION_TOKENS * price["output"]) / 1e6


def dashboard_config(*, dashboard: bool) -> dict[str, Any]:
    """Mock models only: `dash-broken` always answers 503, so tier `flaky` falls back."""
    return {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {"mock": {"type": "mock"}, "broken": {"type": "mock", "fail_status": 503}},
        "models": {
            "dash-main": {"provider": "mock", "price": MAIN_PRICE},
            "dash-cheap": {"provider": "mock", "price": CHEAP_PRICE},
            "dash-broken": {"provider": "broken", "price": MAIN_PRICE},
        },
        "tiers": {
            "main": ["dash-main"],
            "cheap": ["dash-cheap"],
            "flaky": ["dash-broken", "dash-main"],
            "down": ["dash-broken"],
        },
        # No retries, and no cooldown in this test's few failures: each failure is one attempt.
        "routing": {
            "default_tier": "main",
            "retries": 0,
            "cooldown": {"failures": 1000, "seconds": 1},
        },
        "plans": {"pro": {}},
        "keys": [
            {"name": "app", "key": APP_KEY, "plan": "pro", "feature": "chat-api"},
            {"name": "ops", "key": ADMIN_KEY, "admin": True},
        ],
        "usage": {
            "features": ["chat-api", "support-triage", "streaming-chat"],
            "dashboard": dashboard,
        },
    }


# --- headless Chromium -------------------------------------------------------------------


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "Debian's `chromium` is not installed, and the dashboard test drives the page in it. "
            "Install it: apt-get update && apt-get install -y chromium "
            "(scripts/test.sh does this)."
        )
    return path


async def run_chromium(url: str, profile: Path, *extra: str) -> bytes:
    """Chromium as a subprocess, not blocking the event loop the gateway answers on."""
    proc = await asyncio.create_subprocess_exec(
        chromium_path(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        *extra,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), CHROMIUM_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s for {url}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {stderr.decode()[-2000:]}"
    return stdout


async def dump_dom(url: str, profile: Path) -> Dom:
    html = await run_chromium(url, profile, "--dump-dom")
    dom = Dom()
    dom.feed(html.decode())
    dom.close()
    return dom


_VOID = frozenset(
    (
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "source",
        "track",
        "wbr",
    )
)


class Dom(HTMLParser):
    """Every element of a dumped DOM: tag, attributes, text content, and the ids of the
    elements it is in."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str], str, frozenset[str]]] = []
        self._open: list[tuple[str, dict[str, str], list[str], frozenset[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        inside = self._open[-1][3] if self._open else frozenset()
        if tag in _VOID:
            self.elements.append((tag, attributes, "", inside))
            return
        own = {attributes["id"]} if "id" in attributes else set()
        self._open.append((tag, attributes, [], inside | own))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, attributes, parts, inside = self._open.pop()
            text = "".join(parts)
            if self._open:
                self._open[-1][2].append(text)
            self.elements.append((open_tag, attributes, text, inside))
            if open_tag == tag:
                return

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][2].append(data)

    def find(
        self, tag: str | None = None, within: str | None = None, **attrs: str
    ) -> list[tuple[dict[str, str], str]]:
        """Elements (inside the element with id `within`) whose attributes include `attrs`;
        `data_feature` stands for `data-feature`."""
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        return [
            (attributes, text)
            for t, attributes, text, inside in self.elements
            if (tag is None or t == tag)
            and (within is None or within in inside)
            and all(attributes.get(name) == value for name, value in wanted.items())
        ]

    def text(self, tag: str | None = None, within: str | None = None, **attrs: str) -> str:
        found = self.find(tag, within, **attrs)
        assert len(found) == 1, f"expected one element with {attrs} in {within}: {found}"
        return found[0][1].strip()


# --- traffic -----------------------------------------------------------------------------


async def drive_traffic(gateway: GatewayServer) -> None:
    """chat-api: 3 answered + 1 failed (5xx); support-triage: 2 answered after a fallback
    each; streaming-chat: 1 streamed answer from the cheap model."""
    messages: Any = [{"role": "user", "content": PROMPT}]
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        for _ in range(3):
            await client.chat.completions.create(
                model="main",
                messages=messages,
                extra_headers={"X-Gateway-Feature": "chat-api"},
            )
        for _ in range(2):
            answer = await client.chat.completions.with_raw_response.create(
                model="flaky",
                messages=messages,
                extra_headers={"X-Gateway-Feature": "support-triage"},
            )
            assert answer.headers["x-gateway-model"] == "dash-main"
            assert answer.headers["x-gateway-attempts"] == "2"
        stream = await client.chat.completions.create(
            model="cheap",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Gateway-Feature": "streaming-chat"},
        )
        async for chunk in stream:
            if chunk.usage is not None:
                assert chunk.usage.completion_tokens == COMPLETION_TOKENS
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(
                model="down",
                messages=messages,
                extra_headers={"X-Gateway-Feature": "chat-api"},
            )
        assert failed.value.status_code >= 500


_FALLBACK_SAMPLE = re.compile(r"^gateway_fallbacks_total\{(.*)\} (\S+)$", re.MULTILINE)


async def fallbacks_in_metrics(gateway: GatewayServer) -> dict[tuple[str, str], float]:
    """(from_model, to_model) → count, from /metrics. The collectors are process-wide, so
    other tests' fallbacks are there too."""
    async with aiohttp.ClientSession() as session, session.get(gateway.url + "/metrics") as r:
        text = await r.text()
    out: dict[tuple[str, str], float] = {}
    for labels, value in _FALLBACK_SAMPLE.findall(text):
        found = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        pair = (found["from_model"], found["to_model"])
        out[pair] = out.get(pair, 0.0) + float(value)
    return out


# --- tests -------------------------------------------------------------------------------


async def test_dashboard_shows_usage_cost_errors_and_fallbacks(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = await start_gateway(dashboard_config(dashboard=True))
    pair = ("dash-broken", "dash-main")
    before = (await fallbacks_in_metrics(gateway)).get(pair, 0.0)
    await drive_traffic(gateway)
    metrics_fallbacks = await fallbacks_in_metrics(gateway)
    assert metrics_fallbacks[pair] - before == 2

    dom = await dump_dom(gateway.url + "/dashboard", tmp_path / "profile")

    assert dom.find("body", data_state="ready"), "the page did not finish loading its data"
    main_cost, cheap_cost = cost(MAIN_PRICE), cost(CHEAP_PRICE)
    per_request_tokens = PROMPT_TOKENS + COMPLETION_TOKENS
    # Totals: 7 requests, one failed; 6 answered, 26 tokens each.
    assert dom.text(id="total-requests") == "7"
    assert dom.text(id="total-errors") == "1"
    assert dom.text(id="total-error-rate") == "14.3%"
    assert dom.text(id="total-tokens") == str(6 * per_request_tokens)
    total_cost = 5 * main_cost + cheap_cost
    assert dom.text(id="total-cost") == f"${total_cost:.4f}" == "$0.0294"

    def feature(name: str, field: str) -> str:
        return dom.text("td", "features", data_feature=name, data_field=field)

    assert feature("chat-api", "requests") == "4"
    assert feature("chat-api", "errors") == "1"
    assert feature("chat-api", "tokens") == str(3 * per_request_tokens)
    assert feature("chat-api", "cost_usd") == f"${3 * main_cost:.4f}"
    assert feature("support-triage", "requests") == "2"
    assert feature("support-triage", "tokens") == str(2 * per_request_tokens)
    assert feature("support-triage", "cost_usd") == f"${2 * main_cost:.4f}"
    assert feature("streaming-chat", "requests") == "1"
    # Under a cent: three significant figures, not 4 decimals ($0.0004).
    assert feature("streaming-chat", "cost_usd") == f"${cheap_cost:.6f}" == "$0.000420"

    def model(name: str, field: str) -> str:
        return dom.text("td", "models", data_model=name, data_field=field)

    assert model("dash-main", "requests") == "5"
    assert model("dash-main", "tokens") == str(5 * per_request_tokens)
    assert model("dash-cheap", "requests") == "1"

    # The errors section: the one failed request, under its feature.
    assert dom.text("td", "errors", data_feature="chat-api", data_field="errors") == "1"
    assert len(dom.find("tr", "errors", data_feature="chat-api")) == 1
    assert not dom.find("tr", "errors", data_feature="support-triage")

    # Per day: the bars of each feature add up to its requests (one day, or two at midnight).
    bars: dict[str, int] = {}
    for attributes, _ in dom.find("rect"):
        if "data-feature" in attributes:
            name = attributes["data-feature"]
            bars[name] = bars.get(name, 0) + int(attributes["data-value"])
    assert bars == {"chat-api": 4, "support-triage": 2, "streaming-chat": 1}
    assert {a["data-model"] for a, _ in dom.find("circle") if "data-model" in a} >= {
        "dash-main",
        "dash-cheap",
    }

    # Fallbacks, from /metrics, as /metrics counts them: the collectors are process-wide,
    # so other tests' fallbacks are counted too.
    assert (
        dom.text(
            "td",
            "fallbacks",
            data_from_model="dash-broken",
            data_to_model="dash-main",
            data_reason="5xx",
            data_field="count",
        )
        == f"{metrics_fallbacks[pair]:,.0f}"
    )
    assert dom.text(id="total-fallbacks") == f"{sum(metrics_fallbacks.values()):,.0f}"

    shot = tmp_path / "dash.png"
    await run_chromium(
        gateway.url + "/dashboard",
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1280,1600",
    )
    assert shot.exists(), "chromium wrote no screenshot"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 30_000, "the screenshot is nearly empty"


async def test_dashboard_usage_needs_an_admin_key_unless_switched_on(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    closed = await start_gateway(dashboard_config(dashboard=False))
    opened = await start_gateway(dashboard_config(dashboard=True))
    await drive_traffic(closed)
    today = datetime.now(UTC).date()
    window = f"from={today - timedelta(days=1)}&to={today + timedelta(days=1)}"
    window += "&group_by=feature,model"
    async with aiohttp.ClientSession() as session:

        async def get(url: str, key: str | None = None) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            async with session.get(url, headers=headers) as response:
                return response.status, await response.json()

        # The page itself holds no data: it is served to anyone.
        async with session.get(closed.url + "/dashboard") as response:
            assert response.status == 200
            assert response.content_type == "text/html"

        status, body = await get(closed.url + "/dashboard/usage?" + window)
        assert status == 401
        assert body["error"]["type"] == "authentication_error"
        status, body = await get(closed.url + "/dashboard/usage?" + window, APP_KEY)
        assert status == 403
        assert body["error"]["type"] == "permission_error"
        status, body = await get(closed.url + "/dashboard/usage?" + window, ADMIN_KEY)
        assert status == 200
        # Exactly /v1/usage's answer for an admin key: everyone's usage.
        assert (status, body) == await get(closed.url + "/v1/usage?" + window, ADMIN_KEY)
        assert body["object"] == "list" and body["group_by"] == ["feature", "model"]
        assert sum(row["requests"] for row in body["data"]) == 7

        status, body = await get(opened.url + "/dashboard/usage?" + window)
        assert status == 200
        assert body["object"] == "list"
        status, body = await get(opened.url + "/dashboard/usage?group_by=colour")
        assert status == 400
        assert body["error"]["param"] == "group_by"

    # Without the switch and without a key, the page asks for one.
    dom = await dump_dom(closed.url + "/dashboard", tmp_path / "profile")
    assert dom.find("body", data_state="needs-key")
    form = dom.find("form", id="key-form")
    assert form and "hidden" not in form[0][0]
    assert dom.find("main", id="content")[0][0].get("hidden") is not None


async def test_dashboard_loads_nothing_from_elsewhere(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(dashboard_config(dashboard=True))
    async with aiohttp.ClientSession() as session:
        async with session.get(gateway.url + "/dashboard") as response:
            assert response.status == 200
            csp = response.headers["Content-Security-Policy"]
            page = await response.text()
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assets = re.findall(r'(?:href|src)="([^"]+)"', page)
        assert sorted(assets) == ["dashboard/dashboard.css", "dashboard/dashboard.js"]
        texts = [page]
        for asset in assets:
            async with session.get(f"{gateway.url}/{asset}") as response:
                assert response.status == 200, asset
                texts.append(await response.text())
        async with session.get(gateway.url + "/dashboard/secrets.txt") as response:
            assert response.status == 404
    # The SVG namespace is a name, not an address: nothing is fetched from it.
    for text in texts:
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+[^\s\"'`)]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, urls


async def test_dashboard_says_fallbacks_are_unavailable_when_metrics_are_elsewhere(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    raw = dashboard_config(dashboard=True)
    raw["server"]["metrics_port"] = 0
    gateway = await start_gateway(raw)
    await drive_traffic(gateway)

    dom = await dump_dom(gateway.url + "/dashboard", tmp_path / "profile")

    assert dom.find("body", data_state="ready")
    assert dom.text(id="total-requests") == "7"
    assert dom.text(id="total-fallbacks") == "unavailable"
    assert dom.text(id="fallbacks-status") == (
        "fallbacks: unavailable (metrics on a separate port)"
    )


TINY_PRICE = {"input": 0.01, "output": 0.02}  # 10 + 16 tokens: $0.00000042 a request


async def test_dashboard_shows_budgets_and_prints_small_costs_with_their_digits(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    raw = dashboard_config(dashboard=True)
    raw["models"]["dash-tiny"] = {"provider": "mock", "price": TINY_PRICE}
    raw["tiers"]["tiny"] = ["dash-tiny"]
    raw["keys"][0]["budget"] = {"usd": 0.001, "period": "day"}
    raw["budgets"] = {
        "features": {"support-triage": {"usd": 0.5, "period": "month"}},
        "total": {"usd": 10, "period": "total"},
    }
    gateway = await start_gateway(raw)
    messages: Any = [{"role": "user", "content": PROMPT}]
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        for _ in range(3):
            await client.chat.completions.create(model="tiny", messages=messages, max_tokens=16)
    spent = 3 * cost(TINY_PRICE)
    assert spent == pytest.approx(1.26e-6)

    dom = await dump_dom(gateway.url + "/dashboard", tmp_path / "profile")
    assert dom.find("body", data_state="ready"), "the page did not finish loading its data"
    assert dom.text(id="total-cost") == "$0.00000126"  # not $0.0000

    def budget(scope: str, name: str, field: str) -> str:
        return dom.text("td", "budgets", data_scope=scope, data_name=name, data_field=field)

    today = datetime.now(UTC)
    assert budget("key", "app", "period") == today.strftime("%Y-%m-%d")
    assert budget("key", "app", "budget_usd") == "$0.00100"
    assert budget("key", "app", "spent_usd") == "$0.00000126"
    assert budget("key", "app", "remaining_usd") == "$0.000999"
    tomorrow = (today + timedelta(days=1)).strftime("%Y-%m-%d")
    assert budget("key", "app", "resets_at") == f"{tomorrow} 00:00"
    assert budget("feature", "support-triage", "period") == today.strftime("%Y-%m")
    assert budget("feature", "support-triage", "spent_usd") == "$0.0000"
    assert budget("total", "total", "budget_usd") == "$10.0000"
    assert budget("total", "total", "spent_usd") == "$0.00000126"
    assert budget("total", "total", "resets_at") == "never"

    # The cost axis: each tick its own label (tiny steps used to print $0.0001 on every one).
    ticks = [text.strip() for _, text in dom.find("text", "chart-cost") if "$" in text]
    assert len(ticks) >= 3 and len(set(ticks)) == len(ticks), ticks


async def test_budgets_data_needs_what_the_usage_data_needs(start_gateway: StartGateway) -> None:
    raw = dashboard_config(dashboard=False)
    raw["keys"][0]["budget"] = {"usd": 1, "period": "month"}
    gateway = await start_gateway(raw)
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/dashboard/budgets") as refused:
            assert refused.status == 401
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with http.get(gateway.url + "/dashboard/budgets", headers=headers) as answer:
            assert answer.status == 200
            (row,) = (await answer.json())["data"]
    assert row["scope"] == "key" and row["name"] == "app" and row["budget_usd"] == 1
    assert row["spent_usd"] == 0 and row["remaining_usd"] == 1


CACHED_PRICE = {"input": 1000.0, "output": 2000.0}  # the fake's 11 + 4 tokens: $0.019


async def test_dashboard_shows_cache_hits_and_money_saved(
    upstream: FakeOpenAI, start_gateway: StartGateway, tmp_path: Path
) -> None:
    """A miss under one feature, then the same request (a hit) under another: the request
    context is not part of the cache key, so the hit lands in its own feature's row."""
    raw = base_config(upstream.url)
    raw["models"]["gpt-up"]["price"] = CACHED_PRICE
    raw["cache"] = {"backend": "memory", "ttl_s": 60}
    raw["usage"] = {"features": ["chat-api", "support-triage"], "dashboard": True}
    gateway = await start_gateway(raw)
    messages: Any = [{"role": "user", "content": "Is this cached?"}]
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as client:
        for name, expected in (("chat-api", "miss"), ("support-triage", "hit")):
            answer = await client.chat.completions.with_raw_response.create(
                model="fast", messages=messages, extra_headers={"X-Gateway-Feature": name}
            )
            assert answer.headers["x-gateway-cache"] == expected
    assert sum(1 for r in upstream.requests if r.path == "/v1/chat/completions") == 1

    # /v1/usage: the hit and what it saved, in the per-feature and per-model groups.
    async with aiohttp.ClientSession() as http:

        async def rows(group_by: str) -> dict[str, dict[str, Any]]:
            async with http.get(
                gateway.url + "/v1/usage",
                params={"group_by": group_by},
                headers={"Authorization": f"Bearer {APP_KEY}"},
            ) as response:
                assert response.status == 200
                return {row[group_by]: row for row in (await response.json())["data"]}

        features, models = await rows("feature"), await rows("model")
    miss_cost = (11 * CACHED_PRICE["input"] + 4 * CACHED_PRICE["output"]) / 1e6
    assert features["chat-api"]["cost_usd"] == pytest.approx(miss_cost)
    assert features["chat-api"]["cache_hits"] == 0 and features["chat-api"]["saved_usd"] == 0
    assert features["support-triage"]["cost_usd"] == 0
    assert features["support-triage"]["cache_hits"] == 1
    assert features["support-triage"]["saved_usd"] == pytest.approx(miss_cost)
    assert models["gpt-up"]["requests"] == 2 and models["gpt-up"]["cache_hits"] == 1
    assert models["gpt-up"]["saved_usd"] == pytest.approx(miss_cost)

    dom = await dump_dom(gateway.url + "/dashboard", tmp_path / "profile")

    assert dom.find("body", data_state="ready"), "the page did not finish loading its data"
    saved = f"${miss_cost:.4f}"
    assert saved == "$0.0190"
    assert dom.text(id="total-requests") == "2"
    assert dom.text(id="total-cache-hits") == "1"
    assert dom.text(id="total-saved") == saved
    assert dom.text(id="total-cost") == saved  # the miss paid once for both answers

    def feature(name: str, field: str) -> str:
        return dom.text("td", "features", data_feature=name, data_field=field)

    assert feature("chat-api", "cache_hits") == "0"
    assert feature("chat-api", "saved_usd") == "$0.0000"
    assert feature("chat-api", "cost_usd") == saved
    assert feature("support-triage", "cache_hits") == "1"
    assert feature("support-triage", "saved_usd") == saved
    assert feature("support-triage", "cost_usd") == "$0.0000"
    assert dom.text("td", "models", data_model="gpt-up", data_field="cache_hits") == "1"
    assert dom.text("td", "models", data_model="gpt-up", data_field="saved_usd") == saved
