"""One JSON error shape for every failure, and the request ids that tie answers to log lines.

Domain errors subclass werkzeug's `HTTPException`, so Flask treats them like its own; a single
handler turns any `HTTPException` into

    {"error": {"code": ..., "message": ..., "request_id": ..., "details": ...}}

built on `e.get_response()` so headers such as `WWW-Authenticate` and `Retry-After` survive.
Anything else becomes a 500 whose body and log line carry no stack trace.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from flask import Flask, Response, current_app, g, json, request
from werkzeug.exceptions import HTTPException

from .forks import this_pid
from .signals import error_answered

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Code:
    """Every error code an answer may carry, each named once."""

    VALIDATION_ERROR = "VALIDATION_ERROR"
    AUTHENTICATION_REQUIRED = "AUTHENTICATION_REQUIRED"
    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    INVALID_TOKEN = "INVALID_TOKEN"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    INVALID_API_KEY = "INVALID_API_KEY"
    INSUFFICIENT_PERMISSIONS = "INSUFFICIENT_PERMISSIONS"
    REGISTRATION_CLOSED = "REGISTRATION_CLOSED"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    CONFLICT = "CONFLICT"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    URI_TOO_LONG = "URI_TOO_LONG"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    EXPECTATION_FAILED = "EXPECTATION_FAILED"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    CONCURRENCY_LIMIT_EXCEEDED = "CONCURRENCY_LIMIT_EXCEEDED"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    HEADERS_TOO_LARGE = "HEADERS_TOO_LARGE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    STORAGE_BUSY = "STORAGE_BUSY"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"


# The codes an answer of each status may carry; the first is the one given to errors that carry
# none of their own (werkzeug's, gunicorn's). The API description lists them per status.
ERROR_CODES: dict[int, tuple[str, ...]] = {
    400: (Code.VALIDATION_ERROR,),
    401: (
        Code.AUTHENTICATION_REQUIRED,
        Code.INVALID_CREDENTIALS,
        Code.INVALID_TOKEN,
        Code.TOKEN_EXPIRED,
        Code.INVALID_API_KEY,
    ),
    403: (Code.INSUFFICIENT_PERMISSIONS, Code.REGISTRATION_CLOSED),
    404: (Code.NOT_FOUND,),
    405: (Code.METHOD_NOT_ALLOWED,),
    409: (Code.CONFLICT,),
    413: (Code.PAYLOAD_TOO_LARGE,),
    414: (Code.URI_TOO_LONG,),
    415: (Code.UNSUPPORTED_MEDIA_TYPE,),
    417: (Code.EXPECTATION_FAILED,),
    429: (Code.RATE_LIMIT_EXCEEDED, Code.CONCURRENCY_LIMIT_EXCEEDED, Code.QUOTA_EXCEEDED),
    431: (Code.HEADERS_TOO_LARGE,),
    500: (Code.INTERNAL_ERROR,),
    501: (Code.NOT_IMPLEMENTED,),
    503: (
        Code.SERVICE_UNAVAILABLE,
        Code.STORAGE_BUSY,
        Code.STORAGE_UNAVAILABLE,
        Code.MODEL_UNAVAILABLE,
    ),
}


def error_code(status: int) -> str:
    """The code of an error that carries none of its own (werkzeug's, gunicorn's)."""
    codes = ERROR_CODES.get(status)
    return codes[0] if codes else "ERROR"


class ApiError(HTTPException):
    """An error with a stable machine-readable code, a human message and optional details."""

    code = 400
    error_code = Code.VALIDATION_ERROR

    def __init__(
        self,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
        error_code: str | None = None,
    ) -> None:
        super().__init__(description=message)
        self.details = details
        self.extra_headers = headers or {}
        if error_code:
            self.error_code = error_code

    def get_headers(self, environ=None, scope=None) -> list[tuple[str, str]]:
        return [*super().get_headers(environ, scope), *self.extra_headers.items()]


class ValidationError(ApiError):
    code, error_code = 400, Code.VALIDATION_ERROR


class AuthenticationError(ApiError):
    """401; always tells the client how to authenticate."""

    code, error_code = 401, Code.AUTHENTICATION_REQUIRED

    def __init__(self, message: str, *, error_code: str | None = None, **kw: Any) -> None:
        code = error_code or self.error_code
        challenge = 'Bearer realm="inference-server"'
        if code != Code.AUTHENTICATION_REQUIRED:
            challenge += f', error="invalid_token", error_description="{code}"'
        super().__init__(message, error_code=code, headers={"WWW-Authenticate": challenge}, **kw)


class PermissionDenied(ApiError):
    code, error_code = 403, Code.INSUFFICIENT_PERMISSIONS


class NotFound(ApiError):
    code, error_code = 404, Code.NOT_FOUND


class Conflict(ApiError):
    code, error_code = 409, Code.CONFLICT


class PayloadTooLarge(ApiError):
    code, error_code = 413, Code.PAYLOAD_TOO_LARGE


class StorageBusy(ApiError):
    code, error_code = 503, Code.STORAGE_BUSY


class StorageUnavailable(ApiError):
    """The storage cannot take the change: the disk refused a write (full, over quota,
    read-only, I/O error) or Redis cannot be reached. Nothing was changed, and the same request
    may succeed once the operator has made room or Redis is back."""

    code, error_code = 503, Code.STORAGE_UNAVAILABLE


class _Ids:
    """New request ids: 32 hex digits, a random half per process and a counter, so that no
    request pays for a read of the system's random source (ids are labels, not secrets)."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._count = itertools.count()

    def new(self) -> str:
        if self._pid != this_pid():  # a new process (a forked worker): a new random half
            self._pid, self._prefix = this_pid(), os.urandom(8).hex()
        return f"{self._prefix}{next(self._count):016x}"


_ids = _Ids()


def request_id() -> str:
    """The id of the current request: the client's X-Request-ID if sane, else a new one."""
    rid = g.get("request_id")
    if rid is None:
        rid = g.request_id = choose_request_id(request.headers.get(REQUEST_ID_HEADER))
    return rid


def choose_request_id(sent: str | None) -> str:
    """`sent` (a client's X-Request-ID) if it is a sane label, else a new id."""
    return sent if sent and _CLIENT_REQUEST_ID.match(sent) else _ids.new()


def error_body(
    code: str, message: str, details: Any = None, *, rid: str | None = None
) -> dict[str, Any]:
    """The error shape; `rid` names the request where there is no request context (a worker
    thread), else the current request's id is used."""
    rid = rid or request_id()
    return {"error": {"code": code, "message": message, "request_id": rid, "details": details}}


def render_error(exc: HTTPException) -> Response:
    response = exc.get_response()
    code = getattr(exc, "error_code", None) or error_code(exc.code or 500)
    message = exc.description or exc.name
    if (exc.code or 500) >= 500:  # the server's trouble, not the client's: the operator must know
        log.error(
            "%s %s answered %s %s: %s",
            request.method,
            loggable(request.path),
            exc.code,
            code,
            loggable(message),
        )
    response.set_data(json.dumps(error_body(code, message, getattr(exc, "details", None))))
    response.content_type = "application/json"
    _answered(code, response.status_code)
    return response


def _answered(code: str, status: int) -> None:
    if error_answered.receivers:
        error_answered.send(current_app._get_current_object(), code=code, status=status)


def _render_unexpected(exc: Exception) -> Response:
    # The class name only: a traceback could carry request data into the log.
    log.error(
        "unhandled %s on %s %s (request %s)",
        type(exc).__name__,
        request.method,
        loggable(request.path),
        request_id(),
    )
    body = error_body(Code.INTERNAL_ERROR, "the server failed to handle this request")
    _answered(Code.INTERNAL_ERROR, 500)
    return Response(json.dumps(body), status=500, content_type="application/json")


# Answers carry tokens, keys, profiles and per-user predictions: no cache or proxy may keep
# them, and no browser may sniff them into something other than JSON.
NO_STORE = ("Cache-Control", "no-store")
NO_SNIFF = ("X-Content-Type-Options", "nosniff")


def standard_headers(rid: str) -> list[tuple[str, str]]:
    """The headers every answer carries, gunicorn's own refusals included."""
    return [(REQUEST_ID_HEADER, rid), NO_STORE, NO_SNIFF]


def stamp(response: Response, extra: Sequence[tuple[str, str]] = ()) -> None:
    """Add the standard headers and `extra` to `response`, keeping any it already carries (an
    X-RateLimit-Limit of its own keeps out the other limit headers too)."""
    headers = response.headers
    present = {name.lower() for name, _ in headers.items()}
    if "x-ratelimit-limit" in present:
        present.update(("x-ratelimit-remaining", "x-ratelimit-reset"))
    for name, value in (*standard_headers(request_id()), *extra):
        if name.lower() not in present:
            headers.add(name, value)


_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}


def loggable(text: str) -> str:
    """`text` with control characters escaped (`\\x0a`), so that a path or header a client
    chose cannot end a log line and forge the next one."""
    return text if text.isprintable() else text.translate(_CONTROL)


def init_app(app: Flask) -> None:
    """The one error handler of `app` (the headers are `stamp`ed by the extension's after
    hook; an app without it registers `stamp` itself, as the standby app does)."""
    app.register_error_handler(HTTPException, render_error)
    app.register_error_handler(Exception, _render_unexpected)
