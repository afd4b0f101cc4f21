"""Anthropic's error dialect for `/v1/messages`: `{"type": "error", "error": {"type",
"message"}}` with Anthropic's own error types, so the Anthropic SDKs raise the exception class
their users catch (`RateLimitError`, `OverloadedError`, ...) and retry when it can help.

The SDK picks its exception class by HTTP status, not by `error.type` (400
`BadRequestError`, 401 `AuthenticationError`, 403 `PermissionDeniedError`, 404
`NotFoundError`, 413 `RequestTooLargeError`, 429 `RateLimitError`, 529 `OverloadedError`, any
other 5xx `InternalServerError`, of which newer SDKs make 503 and 504 subclasses), so the status
matters as much as the type: `anthropic_status` picks it, `anthropic_error_type` names it.
504 is `timeout_error`, as Anthropic documents it.
"""

from __future__ import annotations

from typing import Any

import orjson

# Anthropic's documented error types by status (docs.anthropic.com "Errors").
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# The gateway's own error codes whose status Anthropic clients expect to be different: every
# model of the chain failed or is saturated is what Anthropic calls "overloaded" (529), which
# the SDKs retry with backoff and Claude Code reports as "Overloaded".
_STATUS_BY_CODE = {
    (503, "all_models_failed"): 529,
    (502, "upstream_overloaded"): 529,  # a one-model chain's upstream said it is overloaded
}


def anthropic_error_type(status: int) -> str:
    """Anthropic's `error.type` for an HTTP status; unknown 4xx are the caller's fault
    (`invalid_request_error`), anything else the server's (`api_error`)."""
    known = _TYPES.get(status)
    if known is not None:
        return known
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error"


def anthropic_status(status: int, gateway_code: str | None) -> int:
    """The status to answer a `/v1/messages` client with, for a gateway error of `status` and
    OpenAI-dialect `code`: 503 `all_models_failed` and 502 `upstream_overloaded` become 529
    `overloaded_error`; the rest
    (429 `capacity` included, which is a rate limit the client can wait out) stay as they are."""
    return _STATUS_BY_CODE.get((status, gateway_code or ""), status)


def error_object(status: int, message: str, *, request_id: str | None = None) -> dict[str, Any]:
    """The error envelope as a dict. `request_id` goes at the top level, where Anthropic puts
    it and where the SDK looks for it when the `request-id` header is missing."""
    body: dict[str, Any] = {
        "type": "error",
        "error": {"type": anthropic_error_type(status), "message": message},
    }
    if request_id:
        body["request_id"] = request_id
    return body


def error_body(status: int, message: str, *, request_id: str | None = None) -> bytes:
    """The JSON body of an error response with this status."""
    return orjson.dumps(error_object(status, message, request_id=request_id))
