"""Property-based: every endpoint driven with generated bodies and headers (hypothesis), against
the gateway as a real process. Bodies are shaped like each API's requests, with any field
replaced by any JSON value, unknown fields added, or the body not JSON at all; headers carry
right and wrong keys, odd content types and arbitrary printable values. For every request:
never a 5xx (the chains end at the mock, so no upstream can be to blame), an error is in the
API's own shape, a stream is a complete body whose events parse; afterwards the process is
alive, healthy, holds no request in flight and logged no traceback."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import APP_KEY, free_port
from tests.gateway_process import ROOT, write_config

# --- the gateway under test -------------------------------------------------------------------


@dataclass
class Fuzzed:
    port: int
    log: Path
    usage: Path
    process: subprocess.Popen[bytes]
    log_read: int = 0  # how much of the log earlier examples have checked

    def new_log(self) -> str:
        """What the gateway logged since the last call."""
        with self.log.open("rb") as handle:
            handle.seek(self.log_read)
            written = handle.read()
        self.log_read += len(written)
        return written.decode(errors="replace")


def fuzz_config(usage: Path) -> dict[str, Any]:
    # A model on a closed port first, so attempts fail and fall back; the mock answers last.
    dead = f"http://127.0.0.1:{free_port()}/v1"
    return {
        "server": {
            "host": "127.0.0.1",
            "shutdown_grace_s": 1,
            "body_timeout_s": 5,
            "cors": {"allow_origins": ["http://app.test"]},
        },
        "providers": {
            "dead": {"type": "openai", "base_url": dead, "api_key": "sk-never-shown"},
            "mock": {"type": "mock"},
        },
        "models": {
            "dead-model": {"provider": "dead", "model": "x", "timeout": {"connect": 0.5}},
            "mock-model": {"provider": "mock"},
        },
        "tiers": {"fast": ["dead-model", "mock-model"], "demo": ["mock-model"]},
        "aliases": {"claude-sonnet-4-6": "demo"},
        "routing": {"default_tier": "demo", "retries": 0},
        # tpm makes the token estimate walk every message; rpm high enough never to refuse.
        "plans": {"pro": {"tiers": ["fast", "demo"], "rpm": 1_000_000, "tpm": 100_000_000}},
        "keys": [{"name": "app", "key": APP_KEY, "plan": "pro"}],
        "usage": {"sinks": {"jsonl": str(usage)}},
    }


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    folder = tmp_path_factory.mktemp("fuzz")
    config, log, usage = folder / "gateway.yaml", folder / "gateway.log", folder / "usage.jsonl"
    write_config(config, fuzz_config(usage))
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(config),
                "--port",
                f"{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-2000:]
            try:
                if request(port, "GET", "/healthz", None, {})[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("the gateway did not start: " + log.read_text()[-2000:])
        yield Fuzzed(port, log, usage, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def request(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection; the whole body read (a stream cut short, or chunked
    framing broken, raises here)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        data = answer.read()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, data
    finally:
        connection.close()


# --- what may be sent -------------------------------------------------------------------------

PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
LATIN1 = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, blacklist_characters="\x7f"), max_size=30
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
ANY_JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
SMALL_INT = st.integers(min_value=-5, max_value=5000) | st.integers()


def either(shaped: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the shape the API expects, sometimes any JSON value in its place."""
    return st.one_of(shaped, shaped, shaped, ANY_JSON)


MODELS = either(st.sampled_from(["demo", "fast", "mock-model", "claude-sonnet-4-6", "nope", ""]))

# OpenAI chat completions
CHAT_PART = st.fixed_dictionaries(
    {"type": either(st.sampled_from(["text", "image_url", "input_audio", "file", "refusal"]))},
    optional={
        "text": either(st.text(max_size=40)),
        "image_url": either(st.fixed_dictionaries({"url": either(st.text(max_size=40))})),
        "input_audio": ANY_JSON,
        "file": ANY_JSON,
    },
)
TOOL_CALL = st.fixed_dictionaries(
    {
        "id": either(st.text(max_size=10)),
        "type": either(st.just("function")),
        "function": either(
            st.fixed_dictionaries(
                {"name": either(st.text(max_size=10)), "arguments": either(st.text(max_size=30))}
            )
        ),
    }
)
CHAT_MESSAGE = st.fixed_dictionaries(
    {"role": either(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))},
    optional={
        "content": either(st.text(max_size=60) | st.lists(CHAT_PART, max_size=3)),
        "name": ANY_JSON,
        "tool_calls": either(st.lists(TOOL_CALL, max_size=2)),
        "tool_call_id": either(st.text(max_size=10)),
        "reasoning_content": ANY_JSON,
    },
)
FUNCTION_TOOL = st.fixed_dictionaries(
    {
        "type": either(st.just("function")),
        "function": either(
            st.fixed_dictionaries(
                {"name": either(st.text(max_size=10))},
                optional={"parameters": ANY_JSON, "strict": ANY_JSON, "description": ANY_JSON},
            )
        ),
    }
)
CHAT = st.fixed_dictionaries(
    {"model": MODELS, "messages": either(st.lists(CHAT_MESSAGE, max_size=4))},
    optional={
        "stream": either(st.booleans()),
        "stream_options": either(st.fixed_dictionaries({"include_usage": either(st.booleans())})),
        "max_tokens": either(SMALL_INT),
        "max_completion_tokens": either(SMALL_INT),
        "n": either(SMALL_INT),
        "temperature": either(st.floats(-1, 3)),
        "top_p": ANY_JSON,
        "stop": either(st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=5)),
        "tools": either(st.lists(FUNCTION_TOOL, max_size=2)),
        "tool_choice": either(st.sampled_from(["auto", "none", "required"])),
        "response_format": either(
            st.fixed_dictionaries(
                {"type": either(st.sampled_from(["text", "json_object", "json_schema"]))},
                optional={"json_schema": ANY_JSON},
            )
        ),
        "user": ANY_JSON,
        "metadata": ANY_JSON,
        "seed": ANY_JSON,
        "logprobs": ANY_JSON,
        "reasoning_effort": ANY_JSON,
        "x_unknown": ANY_JSON,
    },
)

# OpenAI embeddings and legacy completions
EMBEDDINGS = st.fixed_dictionaries(
    {
        "model": MODELS,
        "input": either(
            st.text(max_size=40)
            | st.lists(st.text(max_size=20), max_size=4)
            | st.lists(SMALL_INT, max_size=6)
        ),
    },
    optional={
        "dimensions": either(SMALL_INT | st.integers(min_value=10**6)),
        "encoding_format": either(st.sampled_from(["float", "base64", "int8"])),
        "user": ANY_JSON,
    },
)
COMPLETIONS = st.fixed_dictionaries(
    {
        "model": MODELS,
        "prompt": either(
            st.text(max_size=40)
            | st.lists(st.text(max_size=20), max_size=3)
            | st.lists(SMALL_INT, max_size=6)
            | st.lists(st.lists(SMALL_INT, max_size=4), max_size=3)
        ),
    },
    optional={
        "stream": either(st.booleans()),
        "max_tokens": either(SMALL_INT),
        "n": either(SMALL_INT),
        "best_of": either(SMALL_INT),
        "echo": either(st.booleans()),
        "logprobs": ANY_JSON,
        "suffix": ANY_JSON,
        "stop": ANY_JSON,
        "stream_options": ANY_JSON,
    },
)

# Anthropic messages
CLAUDE_BLOCK = st.fixed_dictionaries(
    {
        "type": either(
            st.sampled_from(
                ["text", "image", "document", "tool_use", "tool_result", "thinking", "server_x"]
            )
        )
    },
    optional={
        "text": either(st.text(max_size=40)),
        "source": either(
            st.fixed_dictionaries(
                {"type": either(st.sampled_from(["base64", "url", "text"]))},
                optional={
                    "media_type": ANY_JSON,
                    "data": ANY_JSON,
                    "url": either(st.text(max_size=20)),
                },
            )
        ),
        "id": either(st.text(max_size=10)),
        "name": either(st.text(max_size=10)),
        "input": ANY_JSON,
        "tool_use_id": either(st.text(max_size=10)),
        "content": ANY_JSON,
        "is_error": ANY_JSON,
        "thinking": ANY_JSON,
        "signature": ANY_JSON,
        "cache_control": ANY_JSON,
    },
)
CLAUDE_MESSAGE = st.fixed_dictionaries(
    {
        "role": either(st.sampled_from(["user", "assistant"])),
        "content": either(st.text(max_size=60) | st.lists(CLAUDE_BLOCK, max_size=3)),
    }
)
CLAUDE_OPTIONAL = {
    "system": either(st.text(max_size=40) | st.lists(CLAUDE_BLOCK, max_size=2)),
    "stream": either(st.booleans()),
    "tools": either(
        st.lists(
            st.fixed_dictionaries(
                {"name": either(st.text(max_size=10))},
                optional={"input_schema": ANY_JSON, "type": ANY_JSON, "description": ANY_JSON},
            ),
            max_size=2,
        )
    ),
    "tool_choice": either(
        st.fixed_dictionaries(
            {"type": either(st.sampled_from(["auto", "any", "tool", "none"]))},
            optional={"name": ANY_JSON, "disable_parallel_tool_use": ANY_JSON},
        )
    ),
    "stop_sequences": ANY_JSON,
    "temperature": ANY_JSON,
    "thinking": either(
        st.fixed_dictionaries(
            {"type": either(st.just("enabled"))}, optional={"budget_tokens": either(SMALL_INT)}
        )
    ),
    "metadata": either(st.fixed_dictionaries({}, optional={"user_id": ANY_JSON})),
    "output_config": ANY_JSON,
}
MESSAGES = st.fixed_dictionaries(
    {
        "model": MODELS,
        "max_tokens": either(SMALL_INT),
        "messages": either(st.lists(CLAUDE_MESSAGE, max_size=4)),
    },
    optional=CLAUDE_OPTIONAL,
)
COUNT_TOKENS = st.fixed_dictionaries(
    {"model": MODELS, "messages": either(st.lists(CLAUDE_MESSAGE, max_size=4))},
    optional={k: v for k, v in CLAUDE_OPTIONAL.items() if k != "stream"},
)

# OpenAI responses
RESPONSE_ITEM = st.fixed_dictionaries(
    {
        "type": either(
            st.sampled_from(
                ["message", "function_call", "function_call_output", "item_reference", "reasoning"]
            )
        )
    },
    optional={
        "role": either(st.sampled_from(["user", "assistant", "system", "developer"])),
        "content": either(
            st.text(max_size=40)
            | st.lists(
                st.fixed_dictionaries(
                    {"type": either(st.sampled_from(["input_text", "output_text", "input_image"]))},
                    optional={"text": ANY_JSON, "image_url": ANY_JSON},
                ),
                max_size=2,
            )
        ),
        "id": ANY_JSON,
        "call_id": either(st.text(max_size=10)),
        "name": ANY_JSON,
        "arguments": ANY_JSON,
        "output": ANY_JSON,
    },
)
RESPONSES = st.fixed_dictionaries(
    {"model": MODELS, "input": either(st.text(max_size=40) | st.lists(RESPONSE_ITEM, max_size=3))},
    optional={
        "instructions": ANY_JSON,
        "stream": either(st.booleans()),
        "store": either(st.booleans()),
        "previous_response_id": either(st.text(max_size=12)),
        "max_output_tokens": either(SMALL_INT),
        "tools": either(
            st.lists(
                st.fixed_dictionaries(
                    {"type": either(st.just("function")), "name": either(st.text(max_size=10))},
                    optional={"parameters": ANY_JSON, "strict": ANY_JSON},
                ),
                max_size=2,
            )
        ),
        "tool_choice": ANY_JSON,
        "text": either(st.fixed_dictionaries({}, optional={"format": ANY_JSON})),
        "reasoning": ANY_JSON,
    },
)

POST_ENDPOINTS: dict[str, st.SearchStrategy[Any]] = {
    "/v1/chat/completions": CHAT,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/completions": COMPLETIONS,
    "/v1/messages": MESSAGES,
    "/v1/messages/count_tokens": COUNT_TOKENS,
    "/v1/responses": RESPONSES,
}


@st.composite
def bodies(draw: st.DrawFn, path: str) -> bytes:
    """The encoded body: mostly shaped JSON, sometimes any JSON value, sometimes not JSON."""
    kind = draw(st.sampled_from(["shaped"] * 8 + ["any", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=60))
    value = draw(POST_ENDPOINTS[path] if kind == "shaped" else ANY_JSON)
    return json.dumps(value).encode()  # NaN and Infinity come out as JavaScript writes them


def header_values(right: str) -> st.SearchStrategy[str]:
    return st.sampled_from([right, right, right, "Bearer wrong", ""]) | LATIN1


@st.composite
def request_headers(draw: st.DrawFn) -> dict[str, str]:
    headers: dict[str, str] = {}
    if draw(st.integers(0, 9)) < 8:
        headers["Authorization"] = draw(header_values(f"Bearer {APP_KEY}"))
    else:
        headers["x-api-key"] = draw(header_values(APP_KEY))
    headers["Content-Type"] = draw(
        st.sampled_from(["application/json"] * 4 + ["text/plain", "application/json; q=x"])
        | PRINTABLE
    )
    optional = {
        "X-Gateway-Feature": LATIN1,
        "X-Gateway-User": LATIN1,
        "X-Gateway-Tier": st.sampled_from(["demo", "fast", "premium"]) | LATIN1,
        "Cache-Control": st.sampled_from(["no-cache", "no-store"]) | PRINTABLE,
        "anthropic-version": st.just("2023-06-01") | PRINTABLE,
        "anthropic-beta": PRINTABLE,
        "X-Request-Id": PRINTABLE,
        "Accept": st.sampled_from(["text/event-stream", "*/*"]) | PRINTABLE,
        "Origin": st.sampled_from(["http://app.test", "http://elsewhere.test"]) | LATIN1,
        "X-Gateway-Conversation": LATIN1,
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=4)):
        headers[name] = draw(optional[name])
    return headers


# --- what must hold of every answer -----------------------------------------------------------


def is_anthropic(path: str) -> bool:
    return path.startswith("/v1/messages")


def assert_error_shape(path: str, error: Any) -> None:
    if is_anthropic(path):
        assert isinstance(error, dict) and error.get("type") == "error", error
        assert set(error["error"]) == {"type", "message"}, error
        assert isinstance(error["error"]["message"], str) and error["error"]["message"]
    else:
        assert isinstance(error, dict) and set(error) == {"error"}, error
        assert set(error["error"]) == {"message", "type", "param", "code"}, error
        assert isinstance(error["error"]["message"], str) and error["error"]["message"]


def assert_stream(path: str, data: bytes) -> None:
    """Every event's data parses; the stream ends as its API ends one, or with an error."""
    events = [e for e in data.decode().split("\n\n") if e.strip()]
    assert events, "an empty stream"
    payloads = []
    for event in events:
        lines = [line[6:] for line in event.split("\n") if line.startswith("data: ")]
        for line in lines:
            if line != "[DONE]":
                payloads.append(json.loads(line))
    errors = [p for p in payloads if "error" in p and p.get("type") in (None, "error")]
    for error in errors:
        assert_error_shape(path, error if is_anthropic(path) else {"error": error["error"]})
    if errors:
        return
    if is_anthropic(path):
        assert payloads[-1]["type"] == "message_stop", events[-3:]
    elif path == "/v1/responses":
        assert payloads[-1]["type"] in ("response.completed", "response.incomplete"), events[-3:]
    else:
        assert events[-1] == "data: [DONE]", events[-3:]


def check(fuzzed: Fuzzed, path: str, status: int, headers: dict[str, str], data: bytes) -> None:
    assert status < 500, (status, data[:500])
    logged = fuzzed.new_log()
    assert "Traceback" not in logged and "Logging error" not in logged, logged[-3000:]
    if status >= 400:
        assert_error_shape(path, json.loads(data))
    elif status == 204:
        assert data == b""
    elif headers.get("content-type", "").startswith("text/event-stream"):
        assert_stream(path, data)
    else:
        json.loads(data)
    assert "sk-never-shown" not in data.decode(errors="replace")


FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "800")),
    deadline=None,
    derandomize=bool(os.environ.get("CI")),  # CI replays one fixed sample; locally, new ones
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(data=st.data())
def test_post_endpoints_never_answer_5xx_to_generated_input(
    fuzzed: Fuzzed, data: st.DataObject
) -> None:
    path = data.draw(st.sampled_from(sorted(POST_ENDPOINTS)), label="path")
    query = data.draw(st.sampled_from(["", "", "?beta=true", "?x=%ff"]), label="query")
    body = data.draw(bodies(path), label="body")
    headers = data.draw(request_headers(), label="headers")
    status, answer_headers, answer = request(fuzzed.port, "POST", path + query, body, headers)
    check(fuzzed, path, status, answer_headers, answer)


@FUZZ
@given(
    path=st.sampled_from(["/v1/models/", "/v1/responses/", "/v1/usage?group_by="]),
    tail=st.text(max_size=20),
    method=st.sampled_from(["GET", "GET", "DELETE", "OPTIONS"]),
    headers=request_headers(),
)
def test_get_endpoints_never_answer_5xx_to_generated_input(
    fuzzed: Fuzzed, path: str, tail: str, method: str, headers: dict[str, str]
) -> None:
    if method == "DELETE" and not path.startswith("/v1/responses/"):
        method = "GET"
    if method == "OPTIONS":  # a preflight, asking for generated headers
        headers = {**headers, "Access-Control-Request-Method": "POST"}
        headers["Access-Control-Request-Headers"] = "".join(c for c in tail if " " <= c <= "~")
    status, answer_headers, answer = request(
        fuzzed.port, method, path + quote(tail, safe=""), None, headers
    )
    check(fuzzed, path, status, answer_headers, answer)


def test_the_gateway_is_whole_after_the_fuzz(fuzzed: Fuzzed) -> None:
    """Runs after the two above (pytest keeps the file's order): the process is alive and
    healthy, no request is left in flight, no traceback was logged, every usage line is whole."""
    assert fuzzed.process.poll() is None
    assert request(fuzzed.port, "GET", "/healthz", None, {})[0] == 200
    _, _, metrics = request(fuzzed.port, "GET", "/metrics", None, {})
    in_flight = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.decode().splitlines()
        if line.startswith("gateway_in_flight_requests{")
    ]
    assert sum(in_flight) == 0
    log = fuzzed.log.read_text()
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]
    assert "sk-never-shown" not in log
    if fuzzed.usage.exists():
        for line in fuzzed.usage.read_text().splitlines():
            json.loads(line)
