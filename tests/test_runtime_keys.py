"""Runtime keys: `/admin/keys` (admin only) makes keys whose secret is shown once and stored as
its SHA-256 only, lists them with their budgets' spend, changes, disables, expires and revokes
them; they survive a restart (SQLite without Redis), a revocation reaches another replica
within a second (Redis), and `gateway keys` does the same from a terminal."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai

from gateway.server.serving import GatewayServer
from tests.conftest import APP_KEY, StartGateway, free_port, to_config
from tests.gateway_process import ROOT, start_gateway_process, write_config
from tests.redis_server import RedisServer

ADMIN_KEY = "gw-test-keys-admin"
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


def keys_config(keys_db: Path | None = None, redis_url: str | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {"mock": {"type": "mock"}},
        "models": {
            "mock-model": {"provider": "mock", "price": {"input": 0, "output": 1.0}},
            "other-model": {"provider": "mock"},
        },
        "tiers": {"demo": ["mock-model"], "other": ["other-model"]},
        "routing": {"retries": 0},
        "plans": {"pro": {"rpm": 1000}, "small": {"tiers": ["demo"]}},
        "keys": [
            {"name": "app", "key": APP_KEY, "plan": "pro"},
            {"name": "ops", "key": ADMIN_KEY, "admin": True},
        ],
    }
    if keys_db is not None:
        raw["keys_db"] = str(keys_db)
    if redis_url is not None:
        raw["redis"] = {"url": redis_url}
        raw["limits"] = {"backend": "redis"}
    return raw


async def call(
    http: aiohttp.ClientSession,
    url: str,
    method: str,
    path: str,
    key: str | None = ADMIN_KEY,
    body: Any = None,
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.request(method, url + path, json=body, headers=headers) as answer:
        return answer.status, await answer.json()


def stored_bytes(folder: Path) -> bytes:
    """Everything SQLite wrote (the database and its write-ahead log)."""
    return b"".join(path.read_bytes() for path in folder.glob("keys.db*"))


async def chat_status(http: aiohttp.ClientSession, url: str, key: str, **body: Any) -> int:
    status, _ = await call(http, url, "POST", "/v1/chat/completions", key, {**CHAT, **body})
    return status


async def test_create_use_list_change_and_revoke(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    db = tmp_path / "keys.db"
    gateway = await start_gateway(keys_config(db))
    url = gateway.url
    async with aiohttp.ClientSession() as http:
        # Admin only.
        assert (await call(http, url, "GET", "/admin/keys", key=None))[0] == 401
        status, refused = await call(http, url, "GET", "/admin/keys", key=APP_KEY)
        assert status == 403 and refused["error"]["code"] == "admin_required"

        status, created = await call(
            http,
            url,
            "POST",
            "/admin/keys",
            body={"name": "partner", "plan": "small", "feature": "partner-api"},
        )
        assert status == 201
        secret = created["key"]
        assert secret.startswith("sk-gw-") and len(secret) > 40
        assert created["name"] == "partner" and created["plan"] == "small"
        assert "sha256" not in created

        # The key works at once, under its plan's tiers.
        assert await chat_status(http, url, secret) == 200
        assert await chat_status(http, url, secret, model="other") == 403

        # Listed without its secret or digest, beside the config's keys.
        status, listed = await call(http, url, "GET", "/admin/keys")
        assert status == 200
        by_name = {row["name"]: row for row in listed["data"]}
        assert by_name["app"]["source"] == "config" and by_name["partner"]["source"] == "runtime"
        text = str(listed)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in text and digest not in text
        # The store holds the digest, never the secret.
        stored = stored_bytes(tmp_path)
        assert secret.encode() not in stored and digest.encode() in stored

        # A name is taken once; config keys are the file's.
        duplicate = {"name": "partner"}
        assert (await call(http, url, "POST", "/admin/keys", body=duplicate))[0] == 409
        assert (await call(http, url, "POST", "/admin/keys", body={"name": "app"}))[0] == 409
        assert (await call(http, url, "PATCH", "/admin/keys/app", body={"disabled": True}))[
            0
        ] == 409
        assert (await call(http, url, "DELETE", "/admin/keys/app"))[0] == 409
        assert (await call(http, url, "DELETE", "/admin/keys/nobody"))[0] == 404

        # Bad input is a 400 naming the parameter.
        for body, param in (
            ({"name": "bad name!"}, "name"),
            ({"name": "x", "plan": "nope"}, "plan"),
            ({"name": "x", "tiers": ["nope"]}, "tiers"),
            ({"name": "x", "budget": {"usd": -1}}, "budget"),
            ({"name": "x", "expires_at": "soon"}, "expires_at"),
            ({"name": "x", "colour": "red"}, "colour"),
        ):
            status, error = await call(http, url, "POST", "/admin/keys", body=body)
            assert status == 400 and error["error"]["param"] == param, (body, error)

        # Disabled, then enabled again; a budget shows on its answers.
        status, changed = await call(
            http, url, "PATCH", "/admin/keys/partner", body={"disabled": True}
        )
        assert status == 200 and changed["disabled"] is True
        status, error = await call(http, url, "POST", "/v1/chat/completions", secret, CHAT)
        assert status == 401 and error["error"]["code"] == "key_disabled"
        budget = {"disabled": False, "budget": {"usd": 1, "period": "day"}}
        assert (await call(http, url, "PATCH", "/admin/keys/partner", body=budget))[0] == 200
        async with http.post(
            url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"}
        ) as answer:
            assert answer.status == 200
            assert float(answer.headers["x-gateway-budget-remaining-usd"]) < 1
        _, listed = await call(http, url, "GET", "/admin/keys")
        (partner,) = [row for row in listed["data"] if row["name"] == "partner"]
        assert partner["budget"] == {"usd": 1.0, "period": "day"}
        assert 0 < partner["budget_spent_usd"] < 0.001

        # Expired.
        past = {"expires_at": "2020-01-01T00:00:00Z"}
        assert (await call(http, url, "PATCH", "/admin/keys/partner", body=past))[0] == 200
        status, error = await call(http, url, "POST", "/v1/chat/completions", secret, CHAT)
        assert status == 401 and error["error"]["code"] == "key_expired"

        # Revoked.
        status, deleted = await call(http, url, "DELETE", "/admin/keys/partner")
        assert status == 200 and deleted == {
            "object": "key.deleted",
            "name": "partner",
            "deleted": True,
        }
        status, error = await call(http, url, "POST", "/v1/chat/completions", secret, CHAT)
        assert status == 401 and error["error"]["code"] == "invalid_api_key"


async def test_a_created_key_survives_a_restart(tmp_path: Path) -> None:
    config = to_config(keys_config(tmp_path / "keys.db"))
    first = GatewayServer(config, "127.0.0.1", 0)
    await first.start()
    try:
        async with aiohttp.ClientSession() as http:
            _, created = await call(
                http, first.url, "POST", "/admin/keys", body={"name": "kept", "plan": "pro"}
            )
    finally:
        await first.stop()
    second = GatewayServer(config, "127.0.0.1", 0)
    await second.start()
    try:
        async with openai.AsyncOpenAI(
            base_url=second.url + "/v1", api_key=created["key"], max_retries=0
        ) as client:
            answer = await client.chat.completions.create(
                model="demo", messages=[{"role": "user", "content": "still here?"}]
            )
        assert answer.choices[0].message.content
    finally:
        await second.stop()


async def test_a_revoked_key_is_refused_on_another_replica_within_a_second(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, keys_config(redis_url=redis_server.url))
    ports = [free_port(), free_port()]
    processes = [await start_gateway_process(path, port) for port in ports]
    one, two = (f"http://127.0.0.1:{port}" for port in ports)
    try:
        async with aiohttp.ClientSession() as http:
            _, created = await call(
                http, one, "POST", "/admin/keys", body={"name": "shared", "plan": "pro"}
            )
            secret = created["key"]
            assert await until_status(http, two, secret, 200) < 1.0
            assert (await call(http, one, "DELETE", "/admin/keys/shared"))[0] == 200
            assert await chat_status(http, one, secret) == 401  # at once where it was revoked
            assert await until_status(http, two, secret, 401) < 1.0
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), 10)


async def until_status(http: aiohttp.ClientSession, url: str, key: str, wanted: int) -> float:
    """Seconds until `key` gets `wanted` on `url` (asked every 20 ms, up to 5 s)."""
    started = time.perf_counter()
    while time.perf_counter() - started < 5:
        if await chat_status(http, url, key) == wanted:
            return time.perf_counter() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"{url} never answered {wanted}")


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "keys",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_line_creates_lists_and_revokes(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = await start_gateway(keys_config(tmp_path / "keys.db"))
    where = ["--url", gateway.url, "--admin-key", ADMIN_KEY]
    code, out, err = await cli(
        *where, "create", "cli-key", "--plan", "pro", "--budget-usd", "5", "--tiers", "demo"
    )
    assert code == 0, err
    secret = next(line.split(": ", 1)[1] for line in err.splitlines() if "shown this once" in line)
    assert secret.startswith("sk-gw-") and secret in out
    async with aiohttp.ClientSession() as http:
        assert await chat_status(http, gateway.url, secret) == 200
    code, out, err = await cli(*where, "list")
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith("cli-key")]
    assert "runtime" in row and "$5/month" in row and secret not in out
    code, out, err = await cli(*where, "revoke", "cli-key")
    assert code == 0 and "revoked cli-key" in out
    async with aiohttp.ClientSession() as http:
        assert await chat_status(http, gateway.url, secret) == 401
    # Errors are the API's, and exit 1.
    code, _, err = await cli(*where, "revoke", "cli-key")
    assert code == 1 and "HTTP 404" in err
    code, _, err = await cli("--url", gateway.url, "--admin-key", APP_KEY, "list")
    assert code == 1 and "HTTP 403" in err


async def test_runtime_keys_need_auth_on(start_gateway: StartGateway) -> None:
    raw = keys_config()
    del raw["keys"]
    gateway = await start_gateway(raw)
    async with aiohttp.ClientSession() as http:
        status, error = await call(http, gateway.url, "POST", "/admin/keys", body={"name": "x"})
    assert status == 503 and error["error"]["code"] == "runtime_keys_off"
