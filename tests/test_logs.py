"""Logs: one JSON object a line, the facts ops need, and never a secret."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
from pathlib import Path

import aiohttp

from gateway.logs import REDACT, AccessLog, JsonFormatter, JsonLineHandler
from tests.conftest import free_port
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI
from tests.gateway_process import log_path, start_gateway_process, write_config

PROVIDER_KEY = "sk-provider-secret-123456"
GATEWAY_KEY = "gw-client-secret-abcdef"


def test_redaction_hides_configured_secrets_and_credential_shapes() -> None:
    REDACT.set_secrets([PROVIDER_KEY, GATEWAY_KEY])
    text = REDACT(
        f"calling with {PROVIDER_KEY}; client sent {GATEWAY_KEY}; "
        '{"Authorization": "Bearer abc.def-ghi"}, x-api-key: anthropic-key-999, '
        'sk-ant-api03-XYZxyz123456 and api_key="hunter22"'
    )
    for secret in (
        PROVIDER_KEY,
        GATEWAY_KEY,
        "abc.def-ghi",
        "anthropic-key-999",
        "XYZxyz123456",
        "hunter22",
    ):
        assert secret not in text
    assert text.count("[REDACTED]") >= 6


def test_tracebacks_are_redacted_too() -> None:
    import logging
    import sys

    REDACT.set_secrets([PROVIDER_KEY])
    try:
        raise RuntimeError(f"upstream refused key {PROVIDER_KEY}")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, sys.exc_info())
    line = JsonFormatter().format(record)
    assert PROVIDER_KEY not in line
    assert "RuntimeError" in json.loads(line)["exc"]


async def test_a_real_process_logs_json_lines_with_request_facts_and_no_secrets(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    raw = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_grace_s": 1},
        "providers": {"up": {"type": "openai", "base_url": upstream.url, "api_key": PROVIDER_KEY}},
        "models": {"gpt": {"provider": "up"}},
        "tiers": {"fast": ["gpt"]},
        "routing": {"retries": 0},
        "keys": [{"name": "web-app", "key": GATEWAY_KEY, "feature": "chat-api"}],
    }
    path = tmp_path / "config.yaml"
    write_config(path, raw)
    port = free_port()
    process = await start_gateway_process(path, port)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    upstream.next(Behaviour(), Behaviour(status=500))
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(
                url, json=body, headers={"Authorization": f"Bearer {GATEWAY_KEY}"}
            ) as r:
                await r.read()
        async with http.post(url, json=body, headers={"Authorization": "Bearer wrong-key-77"}):
            pass
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.wait(), 10)
    text = log_path(path, port).read_text()
    assert PROVIDER_KEY not in text and GATEWAY_KEY not in text and "wrong-key-77" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    requests = [line for line in lines if line.get("msg") == "request"]
    assert len(requests) == 3
    ok = requests[0]
    assert ok["key"] == "web-app" and ok["feature"] == "chat-api"
    assert ok["tier"] == "fast" and ok["model"] == "gpt" and ok["attempts"] == 1
    assert ok["status"] == 200 and ok["latency_ms"] >= 0 and ok["request_id"]
    failed = [line for line in lines if line.get("msg") == "upstream attempt failed"]
    assert failed and failed[0]["upstream_status"] == 500 and "error" in failed[0]
    assert requests[2]["status"] == 401


def _json_setup() -> tuple[logging.Logger, io.StringIO, JsonLineHandler, AccessLog]:
    root = logging.getLogger()
    stream = io.StringIO()
    handler = JsonLineHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"gateway.access-test-{len(root.manager.loggerDict)}")
    access = AccessLog(logger)
    access.use(handler)
    return root, stream, handler, access


def test_access_lines_written_directly_equal_what_logging_writes() -> None:
    root, stream, handler, access = _json_setup()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        fields = {"request_id": "req_1", "status": 200, "key": "web", "latency_ms": 1.5}
        access.write("request", fields)  # no running loop: written at once
        access.logger.info("request", extra=fields)  # the same line through logging
        access.write("request", {**fields, "error": "Bearer abcdefghijk leaked"})
        direct, through_logging, redacted = (
            json.loads(x) for x in stream.getvalue().split("\n")[:3]
        )
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert direct.keys() == through_logging.keys()
    assert list(direct) == list(through_logging)  # same order of fields
    assert {k: v for k, v in direct.items() if k != "ts"} == {
        k: v for k, v in through_logging.items() if k != "ts"
    }
    assert direct["ts"][:16] == through_logging["ts"][:16] and direct["ts"].endswith("Z")
    assert "abcdefghijk" not in redacted["error"]


async def test_access_lines_held_for_the_loop_turn_come_before_later_lines() -> None:
    root, stream, handler, access = _json_setup()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        access.write("request", {"n": 1})
        access.write("request", {"n": 2})
        assert stream.getvalue() == ""  # held until the loop's turn ends...
        logging.getLogger("gateway.other").warning("after")  # ...or another line is written
        access.write("request", {"n": 3})
        await asyncio.sleep(0)
        lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert [line.get("n", line["msg"]) for line in lines] == [1, 2, "after", 3]


def test_another_handler_gets_access_lines_through_logging() -> None:
    root, stream, handler, access = _json_setup()
    other = io.StringIO()
    extra_handler = logging.StreamHandler(other)
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler, extra_handler]
    root.setLevel(logging.INFO)
    try:
        access.write("request", {"n": 1})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert json.loads(stream.getvalue())["n"] == 1
    assert other.getvalue() == "request\n"
