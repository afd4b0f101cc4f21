"""Logging: one JSON object per line on stderr, with secrets redacted.

Redaction runs on the whole rendered line, tracebacks included, so a secret that reaches a log
by any path (an exception message, a repr of a header dict) is still hidden: every secret the
config holds (provider keys, gateway keys) is replaced, and so is anything that looks like a
bearer token, an API key or an auth header value.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from gateway.config import GatewayConfig
from gateway.redact import REDACT, REDACTED, Redactor

__all__ = ["REDACT", "REDACTED", "JsonFormatter", "Redactor", "config_secrets"]

# Attributes every LogRecord has; anything else passed via `extra=` is a field of the line.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def config_secrets(config: GatewayConfig) -> list[str]:
    secrets: list[str] = []
    for provider in config.providers.values():
        api_key = getattr(provider, "api_key", None)
        if api_key:
            secrets.append(api_key)
        # Extra headers often carry credentials (Azure's api-key, gateways' tokens).
        secrets.extend(getattr(provider, "headers", {}).values())
    secrets += [key.key for key in config.keys or [] if key.key]
    return secrets


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return REDACT(orjson.dumps(line, default=str).decode())


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log would be a second, non-JSON line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
