"""API errors in the contract's shape: {"error": {code, message, details, request_id}}."""

from __future__ import annotations

from typing import Any, ClassVar


class ApiError(Exception):
    """An error the client caused or must know about; rendered as the contract's JSON."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(self, message: str | None = None, details: dict[str, Any] | None = None):
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details or {}
        super().__init__(self.message)


class BadRequest(ApiError):
    """The request could not be read."""

    status = 400
    code = "BAD_REQUEST"


class ValidationFailed(ApiError):
    """The request is invalid."""

    status = 422
    code = "VALIDATION_ERROR"


class Unauthorized(ApiError):
    """Authentication is required."""

    status = 401
    code = "UNAUTHORIZED"


class Forbidden(ApiError):
    """You may not do this."""

    status = 403
    code = "FORBIDDEN"


class NotFound(ApiError):
    """The resource does not exist."""

    status = 404
    code = "NOT_FOUND"


class Conflict(ApiError):
    """The resource is not in a state that allows this."""

    status = 409
    code = "CONFLICT"


class RateLimited(ApiError):
    """Too many requests; slow down."""

    status = 429
    code = "RATE_LIMITED"


# aiohttp raises its own HTTP exceptions for routing and body limits; they get the same shape.
HTTP_STATUS_CODES: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
}


def error_body(code: str, message: str, details: dict[str, Any], request_id: str) -> dict[str, Any]:
    """The contract's error envelope."""
    return {
        "error": {"code": code, "message": message, "details": details, "request_id": request_id}
    }
