"""The errors the client raises: one class per family of the server's error codes.

Every answer of the server that is not a success carries one JSON shape,
`{"error": {"code", "message", "request_id", "details"}}`; the client raises the class of its
code's family, carrying those four fields and the HTTP status, so a caller catches what it can
act on (`AuthenticationError`: log in again; `RateLimited`: wait `retry_after`) and logs
`request_id` for the server's operator.
"""

from __future__ import annotations

from typing import Any


class ServerError(Exception):
    """An error answer of the server (or an answer that is not the server's error shape)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        request_id: str | None = None,
        details: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.details = details
        self.retry_after = retry_after  # seconds, when the server said (429, 503)


class ValidationError(ServerError):
    """400: the request is wrong; `details` names the field."""


class AuthenticationError(ServerError):
    """401: no credentials, wrong ones, an expired or revoked token or key."""


class PermissionDenied(ServerError):
    """403: authenticated, but not allowed (scope, role, model list, registration closed)."""


class NotFound(ServerError):
    """404: no such thing, or not yours to see."""


class Conflict(ServerError):
    """409: taken already, or not in a state that allows it (a running job's delete)."""


class PayloadTooLarge(ServerError):
    """413: too many inputs or samples, or too many bytes."""


class RateLimited(ServerError):
    """429: a rate limit, a quota or a concurrency limit (`code` says which); `retry_after`."""


class Unavailable(ServerError):
    """503: storage busy or unreachable, a model unavailable, the queue down; retry later."""


class ConnectionFailed(ServerError):
    """The server could not be reached, or its answer was cut off (status 0)."""


_BY_STATUS: dict[int, type[ServerError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
}


def error_for(status: int, body: Any, headers: Any) -> ServerError:
    """The error of an answer with `status`, its parsed JSON `body` (None if it had none) and
    its `headers`."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": f"HTTP_{status}", "message": "the answer was not the server's JSON error"}
    return _BY_STATUS.get(status, ServerError)(
        status,
        str(error.get("code")),
        str(error.get("message")),
        request_id=error.get("request_id"),
        details=error.get("details"),
        retry_after=retry_after(headers),
    )


def retry_after(headers: Any) -> float | None:
    """`Retry-After` in seconds (the server sends seconds), or None."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
