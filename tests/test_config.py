"""The config file: schema, interpolation, cross-references, and `gateway check-config`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from gateway.config import ConfigError, GatewayConfig, load_config, parse_config
from gateway.providers.openai import OpenAIProviderConfig
from gateway.providers.registry import provider_type

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
providers:
  demo: {type: mock}
  up: {type: openai, base_url: "${UP_URL:-http://127.0.0.1:9/v1}", api_key: "${UP_KEY}"}
models:
  small: {provider: demo}
  big: {provider: up, model: big-upstream, fallbacks: [small]}
tiers:
  fast: [small, big]
aliases: {gpt-4o: fast}
routing: {default_tier: fast, fallback_on: [connect, timeout, 429, 5xx]}
plans:
  free: {rpm: 10, tiers: [fast]}
keys:
  - {name: app, key: "${APP_KEY}", plan: free, feature: chat-api}
"""


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=env if env is not None else {"UP_KEY": "k", "APP_KEY": "a"})
    return caught.value.problems


def test_a_good_config_loads_with_interpolation() -> None:
    config = parse_config(GOOD, env={"UP_KEY": "secret", "APP_KEY": "app-key"})
    up = config.providers["up"]
    assert isinstance(up, OpenAIProviderConfig)
    assert up.type == "openai" and up.api_key == "secret"
    assert up.base_url == "http://127.0.0.1:9/v1"
    assert config.upstream_id("big") == "big-upstream"
    assert config.upstream_id("small") == "small"
    assert config.routing.fallback_on == ["connect", "timeout", "429", "5xx"]
    config2 = parse_config(GOOD, env={"UP_KEY": "s", "APP_KEY": "a", "UP_URL": "http://h:1/v1"})
    up2 = config2.providers["up"]
    assert isinstance(up2, OpenAIProviderConfig) and up2.base_url == "http://h:1/v1"


def test_idle_timeout_and_midstream_defaults_and_settings() -> None:
    """`timeout.idle` bounds a stream's silence after its first event: 30 s unless set;
    `routing.midstream` is off unless set to continue, and takes nothing else."""
    config = parse_config(GOOD, env={"UP_KEY": "k", "APP_KEY": "a"})
    assert config.models["big"].timeout.idle == 30
    assert config.routing.midstream == "off"
    tuned = GOOD.replace(
        "big: {provider: up, model: big-upstream,", "big: {provider: up, timeout: {idle: 2.5},"
    ).replace("routing: {", "routing: {midstream: continue, ")
    config = parse_config(tuned, env={"UP_KEY": "k", "APP_KEY": "a"})
    assert config.models["big"].timeout.idle == 2.5
    assert config.routing.midstream == "continue"
    assert problems_of(GOOD.replace("routing: {", "routing: {midstream: always, "))
    assert problems_of(GOOD.replace("big-upstream,", "big-upstream, timeout: {idle: 0},"))


def test_config_is_frozen() -> None:
    config = parse_config(GOOD, env={"UP_KEY": "k", "APP_KEY": "a"})
    with pytest.raises(pydantic.ValidationError):
        config.server.port = 1  # type: ignore[misc]


def test_unset_variable_without_default_is_named_with_its_path() -> None:
    assert problems_of(GOOD, env={"UP_KEY": "k"}) == [
        "keys[0].key: environment variable APP_KEY is not set"
    ]


def test_dollar_dollar_is_a_literal_dollar() -> None:
    config = parse_config(GOOD.replace("${APP_KEY}", "pa$$word"), env={"UP_KEY": "k"})
    assert config.keys is not None and config.keys[0].key == "pa$word"


def test_unknown_model_in_a_tier_is_reported_with_its_place() -> None:
    text = GOOD.replace("fast: [small, big]", "fast: [small, claude-hiku]")
    assert problems_of(text) == ["tiers.fast[1]: unknown model 'claude-hiku'"]


def test_every_problem_is_reported_at_once() -> None:
    text = (
        GOOD.replace("provider: demo}", "provider: nowhere}")
        .replace("fallbacks: [small]", "fallbacks: [ghost]")
        .replace("aliases: {gpt-4o: fast}", "aliases: {gpt-4o: slow, small: fast}")
        .replace("default_tier: fast", "default_tier: medium")
        .replace("tiers: [fast]", "tiers: [fast, gold]")
        .replace("plan: free", "plan: platinum")
    )
    assert sorted(problems_of(text)) == sorted(
        [
            "models.small.provider: unknown provider 'nowhere'",
            "models.big.fallbacks[0]: unknown model 'ghost'",
            "aliases.gpt-4o: unknown tier or model 'slow'",
            "aliases.small: the name is already a tier or model",
            "routing.default_tier: unknown tier 'medium'",
            "plans.free.tiers[1]: unknown tier 'gold'",
            "keys[0].plan: unknown plan 'platinum'",
        ]
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("routing: {", "routing: {colour: red, "), "routing.colour: unknown key"),
        (
            ("demo: {type: mock}", "demo: {type: mock, speed: 3}"),
            "providers.demo.speed: unknown key",
        ),
        (("demo: {type: mock}", "demo: {type: grpc}"), "providers.demo: type must be one of"),
        (("demo: {type: mock}", "demo: {}"), "providers.demo: type is missing"),
        (
            ('base_url: "${UP_URL:-http://127.0.0.1:9/v1}"', "base_url: ftp://x"),
            "providers.up.base_url: Value error, must be an http:// or https:// URL",
        ),
        (("big: {provider: up,", "big: {"), "models.big.provider: required key is missing"),
        (("fallback_on: [connect,", "fallback_on: [sometimes,"), "routing.fallback_on[0]:"),
        (
            ("plan: free,", "plan: free, key_sha256: abc,"),
            "keys[0].key_sha256: Value error, must be the 64 hex digits",
        ),
    ],
)
def test_schema_errors_name_their_place(change: tuple[str, str], expected: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    found = problems_of(text)
    assert any(p.startswith(expected) for p in found), found


def test_unknown_top_level_section() -> None:
    assert problems_of(GOOD + "extras: {a: 1}\n") == ["extras: unknown key"]


def test_key_needs_exactly_one_secret() -> None:
    text = GOOD.replace('key: "${APP_KEY}", ', "")
    assert problems_of(text) == ["keys[0]: give exactly one of 'key' and 'key_sha256'"]


def test_invalid_yaml_says_where() -> None:
    found = problems_of("server: {port: 80\n  host: [\n")
    assert len(found) == 1 and found[0].startswith("line ")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read the config file" in caught.value.problems[0]


def test_empty_file_is_a_config_with_defaults() -> None:
    assert parse_config("", env={}) == GatewayConfig()


def test_shipped_configs_are_valid() -> None:
    load_config(ROOT / "examples" / "demo.yaml", env={})
    env = {
        "OPENAI_API_KEY": "a",
        "ANTHROPIC_API_KEY": "b",
        "WEB_APP_KEY": "c",
        "TRIAGE_BOT_KEY": "d",
    }
    config = load_config(ROOT / "config.yaml", env=env)
    assert {provider_type(p) for p in config.providers.values()} == {"openai", "anthropic"}
    assert set(config.tiers) >= {"fast", "standard", "premium"}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=ROOT,
    )


def test_check_config_cli_exit_codes_and_lines(tmp_path: Path) -> None:
    good = run_cli("check-config", "--config", "examples/demo.yaml")
    assert good.returncode == 0, good.stdout + good.stderr
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(
        "providers: {demo: {type: mock}}\n"
        "models: {small: {provider: demo}}\n"
        "tiers: {fast: [small, claude-hiku], slow: [turtle]}\n"
    )
    bad = run_cli("check-config", "--config", str(bad_file))
    assert bad.returncode == 1
    assert bad.stdout.splitlines() == [
        "tiers.fast[1]: unknown model 'claude-hiku'",
        "tiers.slow[0]: unknown model 'turtle'",
    ]


def test_check_config_reads_gateway_config_from_the_environment(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "GATEWAY_CONFIG": str(ROOT / "examples" / "demo.yaml")}
    assert run_cli("check-config", env=env).returncode == 0


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("{mode: sentinel}", "mode: sentinel needs a `sentinel:` section"),
        ("{mode: cluster, sentinel: {master: m, nodes: ['h:1']}}", "needs mode: sentinel"),
        ("{sentinel: {master: m, nodes: []}, mode: sentinel}", "at least one sentinel"),
        ("{mode: sentinel, sentinel: {master: m, nodes: ['no-port']}}", "host:port"),
        ("{mode: cluster, url: 'redis://h:6379/3'}", "only database 0"),
        ("{cluster: {nodes: ['h:1']}}", "needs mode: cluster"),
        ("{url: 'http://h:6379'}", "redis://"),
        ("{mode: replicated}", "redis.mode"),
    ],
)
def test_the_redis_section_is_checked(section: str, expected: str) -> None:
    found = problems_of(f"redis: {section}\n")
    assert any(expected in problem for problem in found), found


def test_each_redis_mode_loads() -> None:
    sentinel = parse_config(
        "redis: {mode: sentinel, sentinel: {master: gw, nodes: ['10.0.0.1:26379']}}\n", env={}
    )
    assert sentinel.redis is not None and sentinel.redis.sentinel is not None
    assert sentinel.redis.sentinel.nodes == ["10.0.0.1:26379"]
    cluster = parse_config(
        "redis: {mode: cluster, url: 'redis://10.0.0.1:6379', cluster: {nodes: ['[::1]:7000']}}\n",
        env={},
    )
    assert cluster.redis is not None and cluster.redis.mode == "cluster"
    legacy = parse_config("limits: {backend: redis, redis_url: 'redis://h:1/0'}\n", env={})
    assert legacy.redis is None and legacy.limits.redis_url == "redis://h:1/0"
