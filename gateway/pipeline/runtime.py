"""`Runtime`: one snapshot of config, providers, router and keys, swapped whole on reload.

A request reads the current runtime once at its start and uses that snapshot to its end, so a
reload never changes the rules under a request in flight. A runtime counts the requests using
it; once replaced, it closes the providers the new runtime no longer uses as soon as its last
request ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.config import GatewayConfig
from gateway.errors import ServiceUnavailable
from gateway.logs import REDACT, config_secrets
from gateway.pipeline.auth import Authenticator
from gateway.pipeline.keys import RuntimeKeys
from gateway.pipeline.routing import Router
from gateway.providers.base import Provider
from gateway.providers.registry import build_provider

log = logging.getLogger("gateway.runtime")


@dataclass(eq=False)
class Runtime:
    config: GatewayConfig
    providers: dict[str, Provider]
    router: Router
    auth: Authenticator
    max_body_bytes: int = field(init=False)
    body_timeout_s: float = field(init=False)
    active_requests: int = field(init=False, default=0)
    # Which provider a model is on, for the attempt loop: one function per runtime, not one
    # closure per request (a stream keeps its loop while it lasts).
    provider_of: Callable[[str], str] = field(init=False)
    _to_close: list[Provider] | None = field(init=False, default=None)  # set once retired

    def __post_init__(self) -> None:
        self.max_body_bytes = int(self.config.server.max_body_mb * 1024 * 1024)
        self.body_timeout_s = self.config.server.body_timeout_s
        models = self.config.models
        self.provider_of = lambda name: models[name].provider

    def provider_for(self, model_name: str) -> Provider:
        provider = self.providers.get(self.config.models[model_name].provider)
        if provider is None:
            raise ServiceUnavailable(f"no provider is available for model {model_name!r}")
        return provider

    def enter(self) -> None:
        self.active_requests += 1

    def leave(self) -> bool:
        """One request done; True when this retired runtime is now unused and may close."""
        self.active_requests -= 1
        return self._to_close is not None and self.active_requests == 0

    def retire(self, successor: Runtime) -> bool:
        """Replaced by `successor`: remember which providers only this runtime uses. True
        when nothing uses this runtime any more (close it now)."""
        kept = {id(p) for p in successor.providers.values()}
        self._to_close = [p for p in self.providers.values() if id(p) not in kept]
        return self.active_requests == 0

    async def close_retired(self) -> None:
        for provider in self._to_close or []:
            log.info("closing provider no longer configured", extra={"provider": provider.name})
            await _close(provider)
        self._to_close = []

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await _close(provider)


async def _close(provider: Provider) -> None:
    try:
        await provider.aclose()
    except Exception:
        log.exception("closing provider %s failed", provider.name)


def build_runtime(
    config: GatewayConfig,
    previous: Runtime | None = None,
    runtime_keys: RuntimeKeys | None = None,
) -> Runtime:
    """Build every provider and index for `config`. A provider whose config did not change
    since `previous` is reused, connection pool and all. Raises on a provider that cannot be
    built; nothing new is left open in that case."""
    providers: dict[str, Provider] = {}
    old_config = previous.config.providers if previous is not None else {}
    for name, provider_config in config.providers.items():
        if previous is not None and old_config.get(name) == provider_config:
            providers[name] = previous.providers[name]
        else:
            providers[name] = build_provider(name, provider_config)
    for provider in providers.values():
        provider.max_answer_bytes = int(config.server.max_answer_mb * 2**20)
    if runtime_keys is None and previous is not None:
        runtime_keys = previous.auth.runtime_keys  # the same stored keys, under the new config
    auth = Authenticator(config, runtime_keys)
    # The previous config's secrets stay hidden too: requests on it may still log.
    secrets = config_secrets(config)
    if previous is not None:
        secrets += config_secrets(previous.config)
    REDACT.set_secrets(secrets)
    if not auth.enabled:
        log.warning(
            "no keys: section in the config; authentication is OFF and every caller is "
            "served as 'anonymous'"
        )
    return Runtime(config=config, providers=providers, router=Router(config), auth=auth)
