"""Gateway keys → `Principal`.

A presented key is hashed once with SHA-256 and compared, in constant time, against the digest
of every configured key (no early exit), so neither the key nor its position leaks through
timing. With no `keys:` section auth is off and every caller is the anonymous principal.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from gateway.config import BudgetConfig, GatewayConfig
from gateway.errors import AuthenticationFailed


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

    def __init__(self, config: GatewayConfig) -> None:
        self.enabled = config.keys is not None
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
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' "
                "or in the 'x-api-key' header.",
                code="missing_api_key",
            )
        # aiohttp hands over header bytes that are not UTF-8 as surrogates: hashed as sent.
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: Principal | None = None
        for candidate, principal in self._keys:
            if hmac.compare_digest(digest, candidate):
                found = principal
        if found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return found


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
