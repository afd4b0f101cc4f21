"""Where a request goes: the body's `model` (a tier, an alias or a model name) → a `Route`.

Routes are computed once per config (a handful of names) so that resolving one per request is
a dictionary lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import GatewayConfig
from gateway.errors import InvalidRequest, ModelNotFound, PermissionDenied
from gateway.pipeline.auth import Principal


@dataclass(frozen=True, slots=True)
class Route:
    """A resolved request target: the tier it counts under ("" for a model outside every tier)
    and the models to try, in order."""

    name: str  # what the client asked for
    tier: str
    chain: tuple[str, ...]
    tiers_needed: frozenset[str]  # a plan must allow one of these (empty: any plan may)


class Router:
    """Resolves names against one config snapshot."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._routes: dict[str, Route] = {}
        tiers_of_model: dict[str, list[str]] = {}
        for tier, chain in config.tiers.items():
            for model in chain:
                tiers_of_model.setdefault(model, []).append(tier)
        for tier, chain in config.tiers.items():
            self._routes[tier] = Route(tier, tier, tuple(chain), frozenset([tier]))
        for model, settings in config.models.items():
            tiers = tiers_of_model.get(model, [])
            own_chain = (model, *[f for f in settings.fallbacks if f != model])
            self._routes[model] = Route(
                model, tiers[0] if tiers else "", own_chain, frozenset(tiers)
            )
        for alias, target in config.aliases.items():
            route = self._routes[target]
            self._routes[alias] = Route(alias, route.tier, route.chain, route.tiers_needed)

    def resolve(self, name: object, principal: Principal) -> Route:
        """The route for `model` as the body gave it, checked against the key's plan."""
        if name is None:
            default = self.config.routing.default_tier
            if default is None:
                raise InvalidRequest(
                    "you must provide a model parameter",
                    param="model",
                    code="missing_required_parameter",
                )
            name = default
        if not isinstance(name, str):
            raise InvalidRequest("'model' must be a string", param="model", code="invalid_type")
        route = self._routes.get(name)
        if route is None:
            raise ModelNotFound(
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
            )
        if not self.allowed(route, principal):
            raise PermissionDenied(
                f"Your plan does not include the tier of `{name}`.",
                param="model",
                code="tier_not_allowed",
            )
        return route

    def allowed(self, route: Route, principal: Principal) -> bool:
        plan_tiers = principal.allowed_tiers
        if plan_tiers is None:
            return True
        # A model outside every tier is reachable only by plans without a tier restriction.
        return bool(route.tiers_needed & plan_tiers)

    def visible_names(self, principal: Principal) -> list[tuple[str, str]]:
        """(name, owner) of every tier, alias and model this key may use, for /v1/models."""
        names = []
        for name, route in self._routes.items():
            if not self.allowed(route, principal):
                continue
            if name in self.config.tiers or name in self.config.aliases:
                owner = "gateway"
            else:
                owner = self.config.models[name].provider
            names.append((name, owner))
        return names
