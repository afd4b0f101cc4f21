"""`/admin/keys`: gateway keys made, listed, changed and revoked while the gateway runs.

Admin keys only (401 without a key, 403 for a key that is not admin). A new key's secret,
`sk-gw-` and 43 URL-safe characters, is in the answer to its creation and nowhere else: the
store keeps its SHA-256 digest. Keys from the config file are listed too, but only the file
changes them (409). A change is in force on this replica at once and on every other within
half a second (`gateway.pipeline.keys`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, InvalidRequest, NotFound, ServiceUnavailable
from gateway.http.answers import json_response
from gateway.http.body import read_json_object
from gateway.http.request import PROCESS
from gateway.limits.base import LimiterUnavailable
from gateway.limits.budgets import BudgetCharge, from_nano, to_nano
from gateway.ops.admin import require_admin
from gateway.pipeline.keys import RuntimeKeys
from gateway.store.keys import KeyExists, KeyRecord

SECRET_PREFIX = "sk-gw-"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PERIODS = ("day", "month", "total")
_CREATE_FIELDS = {"name", "plan", "feature", "budget", "tiers", "expires_at", "admin"}
_PATCH_FIELDS = {"plan", "feature", "budget", "tiers", "expires_at", "disabled"}


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


def _keys_of(request: web.Request) -> RuntimeKeys:
    require_admin(request)
    keys = request.app[PROCESS].keys
    if keys.store is None:
        raise ServiceUnavailable(
            "Runtime keys need authentication on: add a `keys:` section to the config.",
            code="runtime_keys_off",
        )
    return keys


def _config(request: web.Request) -> GatewayConfig:
    return request.app[PROCESS].current.config


# --- checking what a client sends ---------------------------------------------------------


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    for name in body:
        if name not in allowed:
            raise InvalidRequest(
                f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter"
            )


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidRequest(f"'{name}' must be a non-empty string or null.", param=name)
    return value


def _plan(config: GatewayConfig, body: dict[str, Any]) -> str | None:
    plan = _text(body, "plan")
    if plan is not None and plan not in config.plans:
        raise InvalidRequest(f"Unknown plan {plan!r}.", param="plan", code="unknown_plan")
    return plan


def _tiers(config: GatewayConfig, body: dict[str, Any]) -> tuple[str, ...] | None:
    tiers = body.get("tiers")
    if tiers is None:
        return None
    if not isinstance(tiers, list) or not all(isinstance(t, str) for t in tiers):
        raise InvalidRequest("'tiers' must be a list of tier names or null.", param="tiers")
    unknown = [t for t in tiers if t not in config.tiers]
    if unknown:
        raise InvalidRequest(f"Unknown tiers: {unknown}.", param="tiers", code="unknown_tier")
    return tuple(tiers)


def _budget(body: dict[str, Any]) -> tuple[float | None, str | None]:
    budget = body.get("budget")
    if budget is None:
        return None, None
    usd = budget.get("usd") if isinstance(budget, dict) else None
    period = budget.get("period", "month") if isinstance(budget, dict) else None
    if (
        not isinstance(budget, dict)
        or set(budget) - {"usd", "period"}
        or isinstance(usd, bool)
        or not isinstance(usd, int | float)
        or usd < 0
        or period not in _PERIODS
    ):
        raise InvalidRequest(
            '\'budget\' must be {"usd": a number >= 0, "period": "day", "month" or '
            '"total"} or null.',
            param="budget",
        )
    return float(usd), str(period)


def _expiry(body: dict[str, Any]) -> float | None:
    value = body.get("expires_at")
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    raise InvalidRequest(
        "'expires_at' must be an ISO 8601 datetime, epoch seconds or null.", param="expires_at"
    )


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean.", param=name)
    return value


# --- what the API answers -----------------------------------------------------------------


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _described(record: KeyRecord) -> dict[str, Any]:
    return {
        "object": "key",
        "name": record.name,
        "source": "runtime",
        "plan": record.plan,
        "feature": record.feature,
        "budget": (
            {"usd": record.budget_usd, "period": record.budget_period}
            if record.budget_usd is not None
            else None
        ),
        "tiers": list(record.tiers) if record.tiers is not None else None,
        "expires_at": _iso(record.expires_at),
        "admin": record.admin,
        "disabled": record.disabled,
        "created_at": _iso(record.created_at),
    }


def _answer(body: dict[str, Any], status: int = 200) -> web.Response:
    response = json_response(orjson.dumps(body), status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _config_names(config: GatewayConfig) -> set[str]:
    return {key.name for key in config.keys or []}


# --- handlers -------------------------------------------------------------------------------


async def create_key(request: web.Request) -> web.StreamResponse:
    keys = _keys_of(request)
    config = _config(request)
    body = await read_json_object(request, 64 * 1024)
    _only(body, _CREATE_FIELDS)
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest(
            "'name' must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit.",
            param="name",
        )
    if name in _config_names(config):
        raise Conflict(f"A key named {name!r} is in the config file.", param="name")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    budget_usd, budget_period = _budget(body)
    record = KeyRecord(
        name=name,
        sha256=hashlib.sha256(secret.encode()).hexdigest(),
        plan=_plan(config, body),
        feature=_text(body, "feature"),
        budget_usd=budget_usd,
        budget_period=budget_period,
        tiers=_tiers(config, body),
        expires_at=_expiry(body),
        admin=_flag(body, "admin"),
        created_at=time.time(),
    )
    assert keys.store is not None
    try:
        await keys.store.create(record)
    except KeyExists:
        raise Conflict(f"A key named {name!r} exists already.", param="name") from None
    await keys.refresh()
    return _answer({**_described(record), "key": secret}, status=201)


async def list_keys(request: web.Request) -> web.StreamResponse:
    keys = _keys_of(request)
    await keys.refresh()
    process = request.app[PROCESS]
    config = process.current.config
    auth = process.current.auth
    rows: list[dict[str, Any]] = []
    for key in config.keys or []:
        plan = config.plans.get(key.plan) if key.plan else None
        budget = key.budget or (plan.budget if plan else None)
        rows.append(
            {
                "object": "key",
                "name": key.name,
                "source": "config",
                "plan": key.plan,
                "feature": key.feature,
                "budget": budget.model_dump() if budget else None,
                "tiers": plan.tiers if plan else None,
                "expires_at": None,
                "admin": key.admin,
                "disabled": False,
                "created_at": None,
            }
        )
    for record in keys.by_name.values():
        row = _described(record)
        try:
            principal = auth.runtime_principal(record)
            row["budget"] = principal.budget.model_dump() if principal.budget else None
        except GatewayError:
            pass  # disabled, expired or its plan gone: shown as stored
        rows.append(row)
    await _add_spend(process.limiter, rows)
    return _answer({"object": "list", "data": rows})


async def _add_spend(limiter: Any, rows: list[dict[str, Any]]) -> None:
    """Each budgeted key's spend in its budget's current period."""
    budgeted = [row for row in rows if row["budget"]]
    charges = [
        (
            f"key:{row['name']}",
            BudgetCharge(
                "key", row["name"], to_nano(row["budget"]["usd"]), row["budget"]["period"]
            ),
        )
        for row in budgeted
    ]
    try:
        used = await limiter.budget_used(charges)
    except LimiterUnavailable:
        return  # listed without spend
    for row, (_, charge), spent in zip(budgeted, charges, used, strict=True):
        row["budget_spent_usd"] = from_nano(spent)
        row["budget_remaining_usd"] = from_nano(max(0, charge.limit - spent))


def _stored(keys: RuntimeKeys, config: GatewayConfig, name: str) -> KeyRecord:
    if name in _config_names(config):
        raise Conflict(
            f"The key {name!r} is in the config file: change it there.", code="config_key"
        )
    record = keys.by_name.get(name)
    if record is None:
        raise NotFound(f"No key named {name!r}.", code="key_not_found")
    return record


async def update_key(request: web.Request) -> web.StreamResponse:
    keys = _keys_of(request)
    config = _config(request)
    await keys.refresh()
    record = _stored(keys, config, request.match_info["name"])
    body = await read_json_object(request, 64 * 1024)
    _only(body, _PATCH_FIELDS)
    changes: dict[str, Any] = {}
    if "plan" in body:
        changes["plan"] = _plan(config, body)
    if "feature" in body:
        changes["feature"] = _text(body, "feature")
    if "budget" in body:
        changes["budget_usd"], changes["budget_period"] = _budget(body)
    if "tiers" in body:
        changes["tiers"] = _tiers(config, body)
    if "expires_at" in body:
        changes["expires_at"] = _expiry(body)
    if "disabled" in body:
        changes["disabled"] = _flag(body, "disabled")
    changed = replace(record, **changes)
    assert keys.store is not None
    if not await keys.store.replace(changed):
        raise NotFound(f"No key named {record.name!r}.", code="key_not_found")
    await keys.refresh()
    return _answer(_described(changed))


async def delete_key(request: web.Request) -> web.StreamResponse:
    keys = _keys_of(request)
    config = _config(request)
    await keys.refresh()
    record = _stored(keys, config, request.match_info["name"])
    assert keys.store is not None
    if not await keys.store.delete(record.name):
        raise NotFound(f"No key named {record.name!r}.", code="key_not_found")
    await keys.refresh()
    return _answer({"object": "key.deleted", "name": record.name, "deleted": True})
