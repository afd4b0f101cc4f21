"""An OpenAI-compatible LLM gateway: tiers, fallbacks, limits, streaming relay, usage, metrics."""

__version__ = "0.1.0"
