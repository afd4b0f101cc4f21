"""Fixtures: a fake OpenAI upstream and gateways on 127.0.0.1, and the real openai client."""

from __future__ import annotations

import copy
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest
import yaml

from gateway.config import GatewayConfig, parse_config
from gateway.server.serving import GatewayServer
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI

pytest_plugins = ["tests.redis_server"]

APP_KEY = "gw-test-app-key"
FREE_KEY = "gw-test-free-key"
UPSTREAM_KEY = "sk-upstream-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_config(upstream_url: str) -> dict[str, Any]:
    """The gateway config most tests use: one fake OpenAI upstream, one mock, two keys."""
    return {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {
            "up": {"type": "openai", "base_url": upstream_url, "api_key": UPSTREAM_KEY},
            "mock": {"type": "mock"},
        },
        "models": {
            "gpt-up": {
                "provider": "up",
                "model": "upstream-model-id",
                "timeout": {"connect": 2, "first_token": 5, "total": 30},
            },
            "embed-up": {"provider": "up", "model": "upstream-embed-id"},
            "mock-model": {"provider": "mock"},
        },
        "tiers": {"fast": ["gpt-up"], "embed": ["embed-up"], "demo": ["mock-model"]},
        "aliases": {"gpt-4o-mini": "fast"},
        # No retries here: each test of one upstream behaviour sees exactly one attempt.
        "routing": {"default_tier": "fast", "retries": 0},
        "plans": {"pro": {"tiers": ["fast", "embed", "demo"]}, "free": {"tiers": ["demo"]}},
        "keys": [
            {"name": "app", "key": APP_KEY, "plan": "pro", "feature": "chat-api"},
            {"name": "free-user", "key": FREE_KEY, "plan": "free"},
        ],
    }


def to_config(raw: dict[str, Any]) -> GatewayConfig:
    return parse_config(yaml.safe_dump(raw), env={})


def merged(raw: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    """`raw` with some sections updated one level deep."""
    out = copy.deepcopy(raw)
    for name, values in sections.items():
        if isinstance(out.get(name), dict):
            out[name].update(values)
        else:
            out[name] = values
    return out


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    fake = FakeOpenAI()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def claude_upstream() -> AsyncIterator[FakeAnthropic]:
    """A fake Anthropic API that takes any key (tests that check the key make their own)."""
    fake = FakeAnthropic(api_key="")
    await fake.start()
    yield fake
    await fake.stop()


StartGateway = Callable[[dict[str, Any]], Awaitable[GatewayServer]]


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    """Start a gateway for a raw config dict; every one started is stopped afterwards."""
    servers: list[GatewayServer] = []

    async def start(raw: dict[str, Any]) -> GatewayServer:
        server = GatewayServer(to_config(raw), "127.0.0.1", 0)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def gateway(upstream: FakeOpenAI, start_gateway: StartGateway) -> GatewayServer:
    return await start_gateway(base_config(upstream.url))


@pytest.fixture
async def client(gateway: GatewayServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=gateway.url + "/v1", api_key=APP_KEY, max_retries=0, timeout=20
    ) as sdk:
        yield sdk
