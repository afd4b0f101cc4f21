"""What can go wrong with one upstream attempt, and what routing does about each kind.

Every `UpstreamFailure` carries one `FailureKind`. A kind's policy lives here and nowhere else:
which `routing.fallback_on` entry lets it move on to the next model, whether the same model is
tried again, whether it counts toward the model's cooldown, and the code the client sees when
it was the last word. A `StrEnum`, so metric labels, logs and attempt listings read the same as
the config's words, while mypy refuses a misspelt kind.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    fallback_class: str | None  # the `routing.fallback_on` entry that lets it move on; None: never
    retried: bool  # the same model again may help
    cools_down: bool  # a sign of the upstream's ill health: counts toward its cooldown
    client_code: str  # the error code a client sees when this failure was the last word
    skips_model: bool = False  # found before sending: move on without counting an attempt


class FailureKind(enum.StrEnum):
    CONNECT = "connect"  # could not reach the upstream
    RESET = "reset"  # the connection broke under the call
    TIMEOUT = "timeout"  # connect, first-token or total timeout
    STALL = "stall"  # a stream went silent after its first event for longer than `idle`
    RATE_LIMITED = "429"  # the upstream's own rate limit
    SERVER_ERROR = "5xx"  # the upstream failed (a 5xx, or an error event)
    BAD_RESPONSE = "bad_response"  # the upstream answered garbage
    CONTEXT_LENGTH = "context_length"  # the prompt does not fit this model
    CLIENT_ERROR = "client_error"  # the upstream refused the request itself
    UNSUPPORTED = "unsupported"  # this provider cannot serve the request as asked

    @property
    def policy(self) -> FailurePolicy:
        return _POLICIES[self]


_POLICIES = {
    FailureKind.CONNECT: FailurePolicy("connect", True, True, "upstream_connect_error"),
    FailureKind.RESET: FailurePolicy("connect", True, True, "upstream_connection_reset"),
    FailureKind.TIMEOUT: FailurePolicy("timeout", True, True, "upstream_timeout"),
    # A silent upstream is as unhealthy as a slow one: `fallback_on: [timeout]` covers it.
    FailureKind.STALL: FailurePolicy("timeout", True, True, "upstream_stalled"),
    FailureKind.RATE_LIMITED: FailurePolicy("429", True, True, "upstream_rate_limited"),
    FailureKind.SERVER_ERROR: FailurePolicy("5xx", True, True, "upstream_server_error"),
    FailureKind.BAD_RESPONSE: FailurePolicy("5xx", True, True, "upstream_bad_response"),
    # The same model again cannot help a prompt that is too long for it, and a long prompt
    # says nothing about the upstream's health.
    FailureKind.CONTEXT_LENGTH: FailurePolicy(
        "context_length", False, False, "context_length_exceeded"
    ),
    # The next model would refuse it too: it goes straight back to the client.
    FailureKind.CLIENT_ERROR: FailurePolicy(None, False, False, "upstream_error"),
    # Refused before anything was sent: no attempt, no ill health; another model may serve it.
    FailureKind.UNSUPPORTED: FailurePolicy(None, False, False, "upstream_error", skips_model=True),
}
assert set(_POLICIES) == set(FailureKind), "every failure kind needs its policy"
