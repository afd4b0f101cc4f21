"""Gateway keys → `Principal`.

A presented key is hashed once with SHA-256 and compared, in constant time, against the digest
of every configured key (no early exit), so neither the key nor its position leaks through
timing. With no `keys:` section auth is off and every caller is the anonymous principal.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from gateway.config import BudgetConfig, GatewayConfig
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.pipeline.keys import RuntimeKeys
from gateway.store.keys import KeyRecord


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: key name, plan and its limits, default feature, admin or not."""

    name: str
    plan: str | None
    feature: str | None
    admin: bool
    allowed_tiers: frozenset[str] | None  # None: every tier
    budget: BudgetConfig | None = None  # the key's own, else its plan's


# With auth off there is no access control at all, admin endpoints included (the log warns).
ANONYMOUS = Principal(name="anonymous", plan=None, feature=None, admin=True, allowed_tiers=None)


class Authenticator:
    """Checks presented keys against one config snapshot."""

    def __init__(self, config: GatewayConfig, runtime_keys: RuntimeKeys | None = None) -> None:
        self.enabled = config.keys is not None
        self.config = config
        # Keys made with /admin/keys: process-wide, carried from one config snapshot to the
        # next; only consulted while auth is on (a `keys:` section).
        self.runtime_keys = runtime_keys
        self._keys: list[tuple[bytes, Principal]] = []
        for key in config.keys or []:
            plan = config.plans.get(key.plan) if key.plan else None
            tiers = frozenset(plan.tiers) if plan and plan.tiers is not None else None
            budget = key.budget or (plan.budget if plan else None)
            principal = Principal(key.name, key.plan, key.feature, key.admin, tiers, budget)
            self._keys.append((key.secret_digest(), principal))

    def authenticate(self, authorization: str | None, x_api_key: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        presented = _bearer(authorization) or x_api_key
        if not presented:
            raise AuthenticationFailed(
                # Worded so that no redaction (every text the gateway emits passes one) can
                # take the hint for a credential.
                "You didn't provide an API key. Send it in an Authorization header using "
                "Bearer auth, or in the 'x-api-key' header.",
                code="missing_api_key",
            )
        # aiohttp hands over header bytes that are not UTF-8 as surrogates: hashed as sent.
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for candidate, principal in self._keys:
            if hmac.compare_digest(digest, candidate):
                found = principal
        if found is None and self.runtime_keys is not None:
            record = self.runtime_keys.lookup(digest)
            if record is not None:
                return self.runtime_principal(record)
        if found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return found

    def runtime_principal(self, record: KeyRecord) -> Principal:
        """A stored key as a caller, under this snapshot's plans; refused when disabled or
        past its expiry, or when its plan is no longer in the config."""
        if record.disabled:
            raise AuthenticationFailed("This API key is disabled.", code="key_disabled")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise AuthenticationFailed("This API key has expired.", code="key_expired")
        plan = self.config.plans.get(record.plan) if record.plan else None
        if record.plan and plan is None:
            raise PermissionDenied(
                f"This API key's plan {record.plan!r} is no longer configured.",
                code="plan_not_configured",
            )
        tiers = frozenset(plan.tiers) if plan and plan.tiers is not None else None
        if record.tiers is not None:
            tiers = (
                frozenset(record.tiers) & tiers if tiers is not None else frozenset(record.tiers)
            )
        budget = (
            BudgetConfig.model_validate(
                {"usd": record.budget_usd, "period": record.budget_period or "month"}
            )
            if record.budget_usd is not None
            else (plan.budget if plan else None)
        )
        return Principal(record.name, record.plan, record.feature, record.admin, tiers, budget)


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
