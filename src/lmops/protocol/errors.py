"""The OpenAI error envelope and the exceptions that map onto it.

Every failure the API can report is one of these; the app turns them into
``{"error": {"message", "type", "param", "code"}}`` with the matching HTTP status.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class APIError(Exception):
    status_code = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, self.error_type, self.param, self.code)


class InvalidRequest(APIError):
    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationError(APIError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDenied(APIError):
    status_code = 403
    error_type = "permission_error"


class NotFound(APIError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    default_code = "model_not_found"

    def __init__(self, model: str):
        super().__init__(f"The model '{model}' does not exist or you do not have access to it.", param="model")


class PayloadTooLarge(APIError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimited(APIError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class Overloaded(RateLimited):
    default_code = "engine_overloaded"

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after)))})


class ClientClosed(APIError):
    """The client went away before its answer: nobody reads the response, but the request is recorded (and logged)
    with nginx's 499 "client closed request", never as the server's failure."""

    status_code = 499
    error_type = "client_closed_request"

    def __init__(self, message: str = "The client closed the connection before the stream ended.") -> None:
        super().__init__(message)


class UpstreamError(APIError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "bad_gateway"


class NoHealthyReplica(APIError):
    status_code = 503
    error_type = "server_error"
    default_code = "no_healthy_replica"


class UpstreamTimeout(APIError):
    status_code = 504
    error_type = "timeout_error"
    default_code = "upstream_timeout"


class LimitsUnavailable(APIError):
    """The shared limit counters (Redis) cannot be reached: requests are refused, not let through unchecked."""

    status_code = 503
    error_type = "server_error"
    default_code = "limits_unavailable"

    def __init__(self) -> None:
        super().__init__("Rate limits and budgets cannot be checked right now; try again shortly.",
                         headers={"Retry-After": "1"})


def error_envelope(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def from_validation_error(exc: ValidationError) -> InvalidRequest:
    """Name the first offending field the way OpenAI does (dotted path in ``param``)."""
    return from_error_list(exc.errors())


def from_error_list(errors: Any) -> InvalidRequest:
    errors = list(errors)
    first: dict[str, Any] = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    text = f"Invalid value for '{param}': {msg}" if param else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return InvalidRequest(text, param=param, code="invalid_value" if param else None)
