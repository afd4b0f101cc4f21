"""Checking an OpenAI API body's parameters, in OpenAI's own error wording."""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest
from gateway.http.body import json_type


def require(body: dict[str, Any], name: str) -> Any:
    if name not in body or body[name] is None:
        raise InvalidRequest(
            f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
        )
    return body[name]


def invalid_type(param: str, expected: str, value: object) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )
