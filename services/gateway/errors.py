"""Errors in the shape each provider's SDK understands, so a client sees a normal API error."""

from __future__ import annotations

import msgspec
from litestar import Response

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_api_key",
    404: "not_found_error",
    413: "invalid_request_error",
    502: "api_error",
    503: "api_error",
    504: "timeout",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
}


def error_body(provider: str, status: int, message: str) -> bytes:
    if provider == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        return msgspec.json.encode({"type": "error", "error": {"type": kind, "message": message}})
    kind = _OPENAI_TYPES.get(status, "api_error")
    code = "invalid_api_key" if status == 401 else None
    return msgspec.json.encode({"error": {"message": message, "type": kind, "param": None, "code": code}})


def error_response(provider: str, status: int, message: str) -> Response:
    return Response(
        content=error_body(provider, status, message),
        status_code=status,
        media_type="application/json",
        headers={"x-meterline-error": "1"},
    )
