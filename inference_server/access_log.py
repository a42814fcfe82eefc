"""The access log: one line per request, with who asked and the request id the client saw.

    2026-11-30 04:50:00,123 [812] INFO inference_server.access: POST /predict 200 1.2ms
    user=usr_1a2b request=7f3c...

Never a credential: the path without its query string, the user's id, the request id (the one
in the `X-Request-ID` answer header, so a client's report finds its line). With
`server.log_format: json` the same fields are keys of the object. The duration runs from the
first hook to the last, so a failed login held back by `auth.failed_login_delay_seconds` shows
the time its client waited.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from auth.errors import request_id

from . import logs


def init_app(app: Flask) -> None:
    """Register before every other hook (so its after-hook runs last)."""
    if app.extensions["settings"].server.access_log:
        app.before_request(_start)
        app.after_request(_record)


def _start() -> None:
    g.access_started = time.perf_counter()


def _record(response: Response) -> Response:
    principal = g.get("principal")
    write(
        request.method,
        request.path,
        response.status_code,
        started=g.get("access_started"),
        user_id=principal.id if principal is not None else None,
        rid=request_id(),
    )
    return response


def write(
    method: str, path: str, status: int, *, started: float | None, user_id: str | None, rid: str
) -> None:
    """The access line of one request (`started`: its `time.perf_counter()` at arrival)."""
    duration = round((time.perf_counter() - started) * 1000, 2) if started else None
    logs.access(
        f"{method} {path} {status} {duration}ms user={user_id or '-'} request={rid}",
        {
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration,
            "user_id": user_id,
            "request_id": rid,
        },
    )
