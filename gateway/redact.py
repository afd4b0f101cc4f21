"""Secrets out of every text the gateway emits: log lines, and whatever it passes on from an
upstream (an error body that echoes the provider's key, some proxies and self-hosted servers
do) to a client's error, an in-band error event, a usage record or the dashboard.

Every secret the config holds (provider keys and credential headers, gateway keys) is
replaced, and so is anything that looks like a bearer token, an API key or an auth header
value. The secrets are set whenever a config is loaded (`pipeline.runtime`). A module of its
own, below the providers, so that every layer can use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"

_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{6,}")
_SK_KEY = re.compile(r"\b(sk-(?:ant-)?)[A-Za-z0-9_-]{8,}")
_KEY_VALUE = re.compile(
    r"""(?i)((?:x-api-key|api[_-]?key|authorization|password|secret)["']?\s*[:=]\s*["']?)"""
    r"""(?!\[REDACTED\])[^"',\s}\]]{4,}"""
)
_PATTERNS = [_BEARER, _SK_KEY, _KEY_VALUE]

# A pattern can only match where its literal words occur. Looking for them first is about 30
# times cheaper than running the patterns (the key-value one costs ~14 us on a log line), and
# almost no line has them. Only for ASCII text: there lower() is exactly what (?i) matches,
# while Unicode case folding has characters (dotless i, long s) that the patterns match and
# lower() does not turn into ASCII.
_KEY_VALUE_WORDS = ("api-key", "api_key", "apikey", "authorization", "password", "secret")


def _replace(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED


class Redactor:
    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is hidden whole.
        unique = {s for s in secrets if s and len(s) >= 6}
        self._secrets = tuple(sorted(unique, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if not text.isascii():
            for pattern in _PATTERNS:
                text = pattern.sub(_replace, text)
            return text
        lowered = text.lower()
        if "bearer" in lowered:
            text = _BEARER.sub(_replace, text)
        if "sk-" in text:
            text = _SK_KEY.sub(_replace, text)
        if any(word in lowered for word in _KEY_VALUE_WORDS):
            text = _KEY_VALUE.sub(_replace, text)
        return text


REDACT = Redactor()
