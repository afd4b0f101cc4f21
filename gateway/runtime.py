"""`Runtime`: one snapshot of config, providers, router and keys, swapped whole on reload.

A request reads the current runtime once at its start and uses that snapshot to its end, so a
reload never changes the rules under a request in flight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gateway.auth import Authenticator
from gateway.config import GatewayConfig
from gateway.cooldown import CooldownStore, MemoryCooldowns
from gateway.errors import ServiceUnavailable
from gateway.providers import Provider, build_provider
from gateway.routing import Router

log = logging.getLogger("gateway.runtime")


@dataclass(eq=False)
class Runtime:
    config: GatewayConfig
    providers: dict[str, Provider]
    router: Router
    auth: Authenticator
    max_body_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.max_body_bytes = int(self.config.server.max_body_mb * 1024 * 1024)

    def provider_for(self, model_name: str) -> Provider:
        provider = self.providers.get(self.config.models[model_name].provider)
        if provider is None:
            raise ServiceUnavailable(f"no provider is available for model {model_name!r}")
        return provider

    async def aclose(self) -> None:
        for provider in self.providers.values():
            try:
                await provider.aclose()
            except Exception:
                log.exception("closing provider %s failed", provider.name)


def build_runtime(config: GatewayConfig) -> Runtime:
    """Build every provider and index for `config`. Raises on a provider that cannot be built;
    nothing is left open in that case."""
    providers: dict[str, Provider] = {}
    for name, provider_config in config.providers.items():
        providers[name] = build_provider(name, provider_config)
    auth = Authenticator(config)
    if not auth.enabled:
        log.warning("no keys: section in the config; authentication is OFF and every caller is "
                    "served as 'anonymous'")
    return Runtime(config=config, providers=providers, router=Router(config), auth=auth)


class RuntimeHolder:
    """The current runtime. Readers take `current` once per request; a reload replaces it."""

    def __init__(self, runtime: Runtime, cooldowns: CooldownStore | None = None) -> None:
        self.current = runtime
        self.draining = False
        # Process state that outlives any one config: kept across reloads.
        self.cooldowns: CooldownStore = cooldowns or MemoryCooldowns()
