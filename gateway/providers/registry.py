"""Providers by `type`. Adding a provider is its file (the Provider class and its config model)
and one line here; the config's union of provider sections and its list of types are derived
from this table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from gateway.config_base import ConfigModel
from gateway.providers.anthropic import AnthropicProvider, AnthropicProviderConfig
from gateway.providers.base import Provider
from gateway.providers.mock import MockProvider, MockProviderConfig
from gateway.providers.openai import OpenAIProvider, OpenAIProviderConfig


@dataclass(frozen=True, slots=True)
class ProviderType:
    config: type[ConfigModel]
    build: Callable[[str, Any], Provider]  # (name, its config) -> Provider


REGISTRY: dict[str, ProviderType] = {
    "openai": ProviderType(OpenAIProviderConfig, OpenAIProvider),
    "anthropic": ProviderType(AnthropicProviderConfig, AnthropicProvider),
    "mock": ProviderType(MockProviderConfig, MockProvider),
}

PROVIDER_TYPES = tuple(REGISTRY)

if TYPE_CHECKING:
    ProviderConfig = ConfigModel
else:
    # A discriminated union of every registered config model, on their `type` field.
    ProviderConfig = Annotated[
        Union[tuple(entry.config for entry in REGISTRY.values())],  # noqa: UP007
        Field(discriminator="type"),
    ]


def provider_type(config: ConfigModel) -> str:
    """A `providers:` entry's `type` (every registered config model has one; to mypy the entry
    is only a ConfigModel, since the union is built from the registry at run time)."""
    kind: str = getattr(config, "type")  # noqa: B009
    return kind


def build_provider(name: str, config: ConfigModel) -> Provider:
    """The Provider for one `providers:` entry (its type was checked when config loaded)."""
    return REGISTRY[provider_type(config)].build(name, config)
