"""Provider secrets never reach a client or a usage record: an upstream whose error body echoes
the credential it was sent (some proxies and self-hosted servers do) has it redacted in the
client's error, in an in-band error event (passed through or translated) and in the record."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, UPSTREAM_KEY, StartGateway, base_config
from tests.fakes.anthropic_upstream import FakeAnthropic, Reply
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.usage_lines import wait_for_records

ANTHROPIC_KEY = "sk-ant-upstream-secret-value"
ECHO = f"invalid credentials: {UPSTREAM_KEY} (Authorization: Bearer {UPSTREAM_KEY})"


@pytest.fixture
async def claude_upstream() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(api_key=ANTHROPIC_KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gateway(
    upstream: FakeOpenAI,
    claude_upstream: FakeAnthropic,
    start_gateway: StartGateway,
    tmp_path: Path,
) -> GatewayServer:
    raw = base_config(upstream.url)
    raw["providers"]["claude"] = {
        "type": "anthropic",
        "base_url": claude_upstream.url,
        "api_key": ANTHROPIC_KEY,
    }
    raw["models"]["claude-model"] = {"provider": "claude"}
    raw["tiers"]["claude"] = ["claude-model"]
    raw["plans"]["pro"]["tiers"].append("claude")
    raw["usage"] = {"sinks": {"jsonl": str(tmp_path / "usage.jsonl")}}
    return await start_gateway(raw)


async def records(gateway: GatewayServer, count: int) -> list[dict[str, Any]]:
    return await wait_for_records(Path(gateway.config.usage.sinks.jsonl or ""), count)


async def test_echoed_credentials_are_redacted_everywhere_the_gateway_writes(
    gateway: GatewayServer, upstream: FakeOpenAI, claude_upstream: FakeAnthropic
) -> None:
    error = {"message": ECHO, "type": "invalid_request_error", "param": None, "code": None}
    upstream.next(Behaviour(status=400, error=error), Behaviour(status=500, error=error))
    seen: list[str] = []
    headers = {"Authorization": f"Bearer {APP_KEY}", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession(headers=headers) as http:
        chat = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(2):
            async with http.post(gateway.url + "/v1/chat/completions", json=chat) as answer:
                assert answer.status in (400, 502)
                seen.append(await answer.text())
        claude_upstream.next(
            Reply(error_event_after=3, error_message=f"bad key {ANTHROPIC_KEY}"),
            Reply(status=401, error_message=f"key {ANTHROPIC_KEY} is not valid"),
        )
        messages = {
            "model": "claude",
            "max_tokens": 50,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        async with http.post(gateway.url + "/v1/messages", json=messages) as answer:
            assert answer.status == 200
            streamed = await answer.text()
            assert "event: error" in streamed
            seen.append(streamed)
        async with http.post(
            gateway.url + "/v1/chat/completions", json={**chat, "model": "claude"}
        ) as answer:
            seen.append(await answer.text())
    rows = await records(gateway, 4)
    texts = [*seen, *(json.dumps(row) for row in rows)]
    for text in texts:
        assert UPSTREAM_KEY not in text and ANTHROPIC_KEY not in text, text
    assert "[REDACTED]" in seen[0] and "invalid credentials" in seen[0]
    assert any("[REDACTED]" in (row["error"] or "") for row in rows)
