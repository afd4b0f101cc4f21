"""The redactor's shortcut (look for each pattern's literal words before running it) must hide
exactly what running every pattern on every text hides."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.redact import _PATTERNS, REDACTED, Redactor

# Pieces that make the patterns match, in any case, next to random text.
_PIECES = st.sampled_from(
    [
        "Bearer ",
        "bearer\t",
        "BEARER ",
        "sk-",
        "sk-ant-",
        "x-api-key",
        "API_KEY",
        "Api-Key",
        "apikey",
        "Authorization",
        "PassWord",
        "secret",
        ": ",
        "=",
        '"',
        "'",
        "abcdefgh12345678",
        "[REDACTED]",
        " ",
        "\u0130",  # capital I with a dot
        "\u0131",  # dotless i
        "\u017f",  # long s
        "\u212a",  # Kelvin sign
    ]
)
_TEXT = st.lists(st.one_of(_PIECES, st.text(max_size=12)), max_size=12).map("".join)


def _every_pattern(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


@settings(max_examples=600, deadline=None)
@given(_TEXT)
def test_the_shortcut_hides_what_every_pattern_hides(text: str) -> None:
    assert Redactor()(text) == _every_pattern(text)


def test_unicode_case_folding_still_redacts() -> None:
    # (?i) matches the dotless i and the long s as ASCII letters; lower() does not.
    redact = Redactor()
    dotless_i, long_s = "\u0131", "\u017f"
    word = f"author{dotless_i}zation: "
    assert redact(word + "abcdefgh") == word + REDACTED
    word = f"pa{long_s}{long_s}word="
    assert redact(word + "abcdefgh") == word + REDACTED


def test_configured_secrets_are_replaced_whole() -> None:
    redact = Redactor()
    redact.set_secrets(["provider-secret-value", "provider-secret"])
    assert redact("got provider-secret-value back") == f"got {REDACTED} back"
