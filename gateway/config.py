"""The config file: typed, frozen, checked whole before anything uses it.

`load_config(path)` reads YAML, interpolates `${VAR}` / `${VAR:-default}` from the environment,
validates the SPEC schema (unknown keys are errors) and checks every cross-reference. Every
problem found is reported at once, each prefixed with its place in the YAML
(`tiers.fast[1]: unknown model 'claude-hiku'`), so that `gateway check-config` can list them all.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from gateway.config_base import (
    ConfigModel,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from gateway.config_redis import RedisConfig
from gateway.providers.base import TimeoutConfig
from gateway.providers.registry import PROVIDER_TYPES, ProviderConfig

Path_ = tuple[str | int, ...]


class ConfigError(Exception):
    """A config that cannot be used; `problems` holds one line per problem, each with its path."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_ORIGIN = re.compile(r"^[a-z][a-z0-9+.\-]*://[^/\s?#]+$")


class CorsConfig(ConfigModel):
    """Browser apps on other origins. Empty `allow_origins`: CORS is off."""

    allow_origins: list[str] = []  # exact origins (`https://app.example.com`), or "*"
    max_age_s: int = Field(default=600, ge=0)  # how long a browser may cache a preflight

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        # Browsers send an origin lowercased, without a path or trailing slash: stored so.
        origins = []
        for origin in value:
            normal = origin.strip().rstrip("/").lower()
            if normal != "*" and not _ORIGIN.match(normal):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port]) or '*'")
            origins.append(normal)
        return origins


class ServerConfig(ConfigModel):
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    max_body_mb: PositiveFloat = 8
    max_concurrent: PositiveInt = 2000
    shutdown_grace_s: NonNegativeFloat = 30
    # While a stream's first token is slow, the answer is held back this long (so that a failure
    # can still get a real HTTP status), then committed and kept alive with `: keep-alive`
    # comments at this interval so idle-timeout proxies do not cut it.
    keepalive_s: PositiveFloat = 15
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    cors: CorsConfig = CorsConfig()  # read per request: a reload applies at once
    # What is read of a whole (non-streamed) upstream answer; past it the attempt fails as
    # a bad response. Streams are never held whole.
    max_answer_mb: PositiveFloat = 64
    # How long a client may take to send its whole body (408 after). No slot is held while
    # it is read, so slow clients cannot take the gateway's capacity.
    body_timeout_s: PositiveFloat = 30
    # Connections one client address may hold open without a complete request (headers not
    # all sent yet, or a body still arriving); past it new ones are refused. 0: no cap. Behind
    # a load balancer every client has its address: raise it, or set 0 there.
    max_pending_per_address: NonNegativeInt = 64
    # Once the process is quiet after serving, give glibc's free heap pages back to the OS, so
    # RSS falls back toward idle after a peak (gateway.pipeline.memory). Off: RSS stays near
    # the peak, reused by the next one.
    trim_memory: bool = True


class PriceConfig(ConfigModel):
    """USD per million tokens."""

    input: NonNegativeFloat = 0
    output: NonNegativeFloat = 0
    cached_input: NonNegativeFloat | None = None  # None: cached input priced as input
    # Tokens written to a prompt cache (Anthropic's cache creation: 1.25x input for its
    # 5-minute cache); None: priced as input.
    cache_write: NonNegativeFloat | None = None
    # Writes to a 1-hour cache, where the provider prices them apart (Anthropic: 2x input);
    # None: priced as `cache_write`.
    cache_write_1h: NonNegativeFloat | None = None


class LimitConfig(ConfigModel):
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_concurrent: PositiveInt | None = None


class ModelConfig(ConfigModel):
    provider: str
    model: str | None = None  # the upstream's own id; defaults to this model's name
    price: PriceConfig = PriceConfig()
    timeout: TimeoutConfig = TimeoutConfig()
    limits: LimitConfig = LimitConfig()
    fallbacks: list[str] = []
    # The upstream model takes chat's `reasoning_effort` (OpenAI's o-series and gpt-5, vLLM
    # reasoning models): Anthropic `thinking` and Responses `reasoning` are mapped to it;
    # otherwise they are dropped, since a model that does not know the field refuses it.
    reasoning: bool = False


FallbackKind = Literal["connect", "timeout", "429", "5xx", "context_length"]


class CooldownConfig(ConfigModel):
    failures: PositiveInt = 3
    seconds: NonNegativeFloat = 30


class RoutingConfig(ConfigModel):
    default_tier: str | None = None  # None: a body without `model` is a 400, as at OpenAI
    retries: int = Field(default=1, ge=0, le=10)
    fallback_on: list[FallbackKind] = ["connect", "timeout", "429", "5xx"]
    cooldown: CooldownConfig = CooldownConfig()
    # A text stream that fails after its first event: `off` ends it with an in-band error,
    # `continue` goes on with the next model from the text already sent (pipeline/midstream).
    midstream: Literal["off", "continue"] = "off"

    @field_validator("fallback_on", mode="before")
    @classmethod
    def _status_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 429 as a number.
        if isinstance(value, list):
            return [str(item) if isinstance(item, int) else item for item in value]
        return value


class BudgetConfig(ConfigModel):
    """A spend cap in USD over a period: `day` or `month` (UTC calendar, reset at the
    boundary) or `total` (never reset)."""

    usd: NonNegativeFloat
    period: Literal["day", "month", "total"] = "month"


class BudgetsConfig(ConfigModel):
    """Caps across every key: per feature (the request's feature), and over everything."""

    features: dict[str, BudgetConfig] = {}
    total: BudgetConfig | None = None


class PlanConfig(ConfigModel):
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    max_concurrent: PositiveInt | None = None
    tiers: list[str] | None = None  # None: every tier
    budget: BudgetConfig | None = None  # per key on this plan


class KeyConfig(ConfigModel):
    name: str = Field(min_length=1)
    key: str | None = Field(default=None, min_length=1)
    key_sha256: str | None = None
    plan: str | None = None
    feature: str | None = None
    admin: bool = False
    budget: BudgetConfig | None = None  # overrides the plan's

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("must be the 64 hex digits of a SHA-256 digest")
        return value.lower() if value is not None else None

    def secret_digest(self) -> bytes:
        """SHA-256 of the key: what a presented key is compared against."""
        if self.key_sha256 is not None:
            return bytes.fromhex(self.key_sha256)
        assert self.key is not None  # checked at load
        return hashlib.sha256(self.key.encode()).digest()


class LimitsConfig(ConfigModel):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    on_backend_error: Literal["allow", "deny"] = "allow"
    lease_ttl_s: PositiveFloat = 60  # a dead replica's leases free themselves after this
    # Redis only: how long a replica may admit from a block of quota taken from Redis in one
    # call (see README, Limits); 0 admits every request in Redis.
    quota_lease_s: float = Field(default=1.0, ge=0, le=1)


class SinksConfig(ConfigModel):
    jsonl: str | None = None  # path of the append-only file; null: off
    jsonl_max_mb: PositiveFloat = 100  # rotate when the file passes this size
    jsonl_rotate_daily: bool = True
    redis: bool = False
    redis_stream_maxlen: PositiveInt = 1_000_000


class UsageConfig(ConfigModel):
    features: list[str] = []
    sinks: SinksConfig = SinksConfig()
    queue_size: PositiveInt = 10_000
    dashboard: bool = False  # serve /dashboard without an admin key


class ResponsesConfig(ConfigModel):
    """Stored Responses (`POST /v1/responses` unless `store: false`): in memory, or in the
    shared Redis when there is a `redis:` section."""

    ttl_s: PositiveFloat = 30 * 24 * 3600  # OpenAI keeps responses 30 days
    max_memory_mb: PositiveFloat = 64  # the in-memory store's bound; the oldest go first


class CacheConfig(ConfigModel):
    """The exact response cache (absent: off): identical requests answered from it."""

    backend: Literal["memory", "redis"] = "memory"  # memory: this process; redis: every replica
    ttl_s: PositiveFloat = 3600
    max_mb: PositiveFloat = 256  # the memory backend's bound, least recently used out first
    scope: Literal["key", "global"] = "key"  # key: a key hits only what it stored itself


class GatewayConfig(ConfigModel):
    server: ServerConfig = ServerConfig()
    providers: dict[str, ProviderConfig] = {}
    models: dict[str, ModelConfig] = {}
    tiers: dict[str, list[str]] = {}
    aliases: dict[str, str] = {}
    routing: RoutingConfig = RoutingConfig()
    plans: dict[str, PlanConfig] = {}
    keys: list[KeyConfig] | None = None  # None: auth is off
    budgets: BudgetsConfig = BudgetsConfig()
    # Where keys made with /admin/keys are kept when there is no `redis:` section: a SQLite
    # file, relative to the config file's folder.
    keys_db: str = "gateway-keys.db"
    limits: LimitsConfig = LimitsConfig()
    usage: UsageConfig = UsageConfig()
    redis: RedisConfig | None = None  # None: `limits.redis_url` says where Redis is
    responses: ResponsesConfig = ResponsesConfig()
    cache: CacheConfig | None = None  # None: no response cache

    def upstream_id(self, model_name: str) -> str:
        """The id the upstream knows the model by."""
        return self.models[model_name].model or model_name


# --- loading -------------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def format_path(path: Path_) -> str:
    """`("tiers", "fast", 1)` → `tiers.fast[1]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top)"


def interpolate(
    node: Any, env: Mapping[str, str], problems: dict[str, str], path: Path_ = ()
) -> Any:
    """Replace `${VAR}` and `${VAR:-default}` in every string; `$$` is a literal `$`.
    Unset variables are recorded in `problems` by YAML path."""
    if isinstance(node, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            value = env.get(name)
            if value is None or (value == "" and default is not None):
                if default is not None:
                    return default
                where = format_path(path)
                problems[where] = f"{where}: environment variable {name} is not set"
                return ""
            return value

        return _VAR.sub(substitute, node)
    if isinstance(node, dict):
        return {k: interpolate(v, env, problems, (*path, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, problems, (*path, i)) for i, v in enumerate(node)]
    return node


_TYPE_LIST = ", ".join(f"'{name}'" for name in PROVIDER_TYPES)


def _validation_problems(error: ValidationError, skip: Mapping[str, str]) -> list[str]:
    """One line per validation error, except at paths already reported (an unset variable
    there explains the rest)."""
    problems = []
    for item in error.errors():
        loc = list(item["loc"])
        # A provider's discriminator tag ("openai", "mock") appears in the location; it is not
        # part of the YAML path the user edits.
        if len(loc) >= 3 and loc[0] == "providers" and loc[2] in PROVIDER_TYPES:
            del loc[2]
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif item["type"] == "union_tag_invalid":
            message = f"type must be one of {_TYPE_LIST}"
        elif item["type"] == "union_tag_not_found":
            message = f"type is missing (one of {_TYPE_LIST})"
        where = format_path(tuple(loc))
        if where not in skip:
            problems.append(f"{where}: {message}")
    return problems


def check_references(config: GatewayConfig) -> list[str]:
    """Every name that points elsewhere must exist; names must not mean two things."""
    problems: list[str] = []
    models, tiers, plans = config.models, config.tiers, config.plans

    for name, model in models.items():
        if model.provider not in config.providers:
            problems.append(f"models.{name}.provider: unknown provider {model.provider!r}")
        for i, fallback in enumerate(model.fallbacks):
            if fallback not in models:
                problems.append(f"models.{name}.fallbacks[{i}]: unknown model {fallback!r}")
            elif fallback == name:
                problems.append(f"models.{name}.fallbacks[{i}]: a model cannot fall back to itself")

    for tier, chain in tiers.items():
        if not chain:
            problems.append(f"tiers.{tier}: a tier needs at least one model")
        for i, model_name in enumerate(chain):
            if model_name not in models:
                problems.append(f"tiers.{tier}[{i}]: unknown model {model_name!r}")
        if tier in models:
            problems.append(f"tiers.{tier}: the name is also a model; a name must mean one thing")

    for alias, target in config.aliases.items():
        if target not in tiers and target not in models:
            problems.append(f"aliases.{alias}: unknown tier or model {target!r}")
        if alias in tiers or alias in models:
            problems.append(f"aliases.{alias}: the name is already a tier or model")

    default_tier = config.routing.default_tier
    if default_tier is not None and default_tier not in tiers:
        problems.append(f"routing.default_tier: unknown tier {default_tier!r}")

    for plan_name, plan in plans.items():
        for i, tier in enumerate(plan.tiers or []):
            if tier not in tiers:
                problems.append(f"plans.{plan_name}.tiers[{i}]: unknown tier {tier!r}")

    seen_names: set[str] = set()
    seen_digests: set[bytes] = set()
    for i, key in enumerate(config.keys or []):
        place = f"keys[{i}]"
        if (key.key is None) == (key.key_sha256 is None):
            problems.append(f"{place}: give exactly one of 'key' and 'key_sha256'")
            continue
        if key.plan is not None and key.plan not in plans:
            problems.append(f"{place}.plan: unknown plan {key.plan!r}")
        if key.name in seen_names:
            problems.append(f"{place}.name: duplicate key name {key.name!r}")
        digest = key.secret_digest()
        if digest in seen_digests:
            problems.append(f"{place}: the same secret is used by another key")
        seen_names.add(key.name)
        seen_digests.add(digest)

    server = config.server
    if server.metrics_port is not None and server.metrics_port == server.port != 0:
        problems.append("server.metrics_port: must differ from server.port")
    return problems


def parse_config(text: str, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Parse, interpolate, validate and cross-check config text; raise ConfigError listing all."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {reason}"]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["(top): the config must be a mapping of sections"])

    unset: dict[str, str] = {}
    raw = interpolate(raw, os.environ if env is None else env, unset)
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([*unset.values(), *_validation_problems(exc, unset)]) from exc
    problems = [*unset.values(), *check_references(config)]
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read and check the config file at `path`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}"]) from exc
    return parse_config(text, env)


def default_config_path() -> str:
    """`$GATEWAY_CONFIG`, then `config.yaml`."""
    return os.environ.get("GATEWAY_CONFIG") or "config.yaml"
