"""One tree of errors, each knowing its HTTP status, its OpenAI `type`/`code`, and whether a
retry by the client can help (`x-should-retry`).

`UpstreamFailure` is what providers raise: it carries its `FailureKind`, whose policy routing
follows, and turns into the client-facing error when nothing else can answer.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from gateway.failures import FailureKind
from gateway.redact import REDACT


def retry_headers(seconds: float) -> dict[str, str]:
    """`retry-after` (whole seconds) and `retry-after-ms`, both rounded up: a client that
    waits exactly this long must not be early."""
    return {
        "retry-after": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, math.ceil(seconds * 1000))),
    }


class GatewayError(Exception):
    """An error the client sees as OpenAI-shaped JSON."""

    status = 500
    type = "server_error"
    code: str | None = None
    should_retry = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if error_type is not None:
            self.type = error_type
        if should_retry is not None:
            self.should_retry = should_retry
        self.headers: dict[str, str] = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"


class ModelNotFound(GatewayError):
    # Exactly what OpenAI answers for a model it does not know.
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class RequestTooLarge(GatewayError):
    status = 413
    type = "request_too_large"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    should_retry = True


class InsufficientQuota(GatewayError):
    """A budget is spent: as OpenAI answers an exhausted quota. Retrying does not help until
    the budget's period resets."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"
    should_retry = False


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    should_retry = True


class AllModelsFailed(GatewayError):
    status = 503
    type = "all_models_failed"
    code = "all_models_failed"
    should_retry = True


class UpstreamTimeout(GatewayError):
    status = 504
    type = "upstream_timeout"
    code = "upstream_timeout"
    should_retry = True


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"
    should_retry = True


# --- failures of one upstream attempt ------------------------------------------------------


_OVERLOADED = (503, 529)  # statuses by which an upstream says it is overloaded, not broken


def _redacted(error: dict[str, Any]) -> dict[str, Any]:
    return {k: REDACT(v) if isinstance(v, str) else v for k, v in error.items()}


class UpstreamFailure(Exception):
    """One upstream attempt failed; its `kind` (see `gateway.failures`) decides what
    routing does next and what the client sees when nothing else can answer."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        upstream_error: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        # Upstream text goes on to clients and usage records: an error body that echoes a
        # credential must not (some proxies and self-hosted servers echo the request's key).
        message = REDACT(message)
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status  # the upstream's HTTP status, when it answered
        # the upstream's own OpenAI-shaped error object, its texts redacted too
        self.upstream_error = _redacted(upstream_error) if upstream_error else upstream_error
        self.retry_after = retry_after
        self.noted = False  # logged and counted as a failed attempt already

    def to_client_error(self) -> GatewayError:
        """What the client sees when this was the last word."""
        kind = self.kind
        if kind is FailureKind.TIMEOUT:
            return UpstreamTimeout(f"The upstream did not answer in time: {self.message}")
        if kind.policy.fallback_class is None or kind is FailureKind.CONTEXT_LENGTH:
            if self.status:
                return self._relayed_client_error()
            return UpstreamError(f"The upstream failed: {self.message}", code="upstream_error")
        if kind is FailureKind.RATE_LIMITED:
            headers = retry_headers(self.retry_after) if self.retry_after is not None else {}
            return RateLimited(
                f"The upstream is rate limiting requests: {self.message}",
                code=kind.policy.client_code,
                headers=headers,
            )
        code = kind.policy.client_code
        if kind is FailureKind.SERVER_ERROR and self.status in _OVERLOADED:
            code = "upstream_overloaded"  # which Anthropic's clients know as 529
        return UpstreamError(f"The upstream failed: {self.message}", code=code)

    def _relayed_client_error(self) -> GatewayError:
        """The upstream refused the request itself (a bad parameter, a prompt too long): the
        client gets the upstream's own status and error, since only the client can fix it.
        An upstream 401/403/404 is the gateway's misconfiguration, not the client's."""
        assert self.status is not None
        if self.status in (401, 403, 404):
            return UpstreamError(
                f"The upstream refused the gateway's request ({self.status}): {self.message}",
                code="upstream_rejected",
                should_retry=False,
            )
        err = self.upstream_error or {}
        message = err.get("message") if isinstance(err.get("message"), str) else self.message
        param = err.get("param") if isinstance(err.get("param"), str) else None
        code = err.get("code")
        if self.kind is FailureKind.CONTEXT_LENGTH:
            code = self.kind.policy.client_code
        error_type = err.get("type") if isinstance(err.get("type"), str) else None
        return GatewayError(
            str(message),
            param=param,
            code=str(code) if code is not None else None,
            status=self.status,
            error_type=error_type or "invalid_request_error",
            should_retry=False,
        )
