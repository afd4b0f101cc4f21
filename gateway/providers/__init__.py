"""Providers by `type`: the registry that turns a `providers:` entry into a Provider."""

from __future__ import annotations

from gateway.config import (
    AnthropicProviderConfig,
    MockProviderConfig,
    OpenAIProviderConfig,
    ProviderConfig,
)
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider
from gateway.providers.mock import MockProvider
from gateway.providers.openai import OpenAIProvider


class UnsupportedProvider(Exception):
    """A provider type this build cannot serve yet."""


def build_provider(name: str, config: ProviderConfig) -> Provider:
    if isinstance(config, OpenAIProviderConfig):
        return OpenAIProvider(name, config)
    if isinstance(config, MockProviderConfig):
        return MockProvider(name, config)
    if isinstance(config, AnthropicProviderConfig):
        return AnthropicProvider(name, config)
    raise UnsupportedProvider(f"providers.{name}: unknown provider type")


__all__ = ["Provider", "UnsupportedProvider", "build_provider"]
