"""The access log: one line per request, with who asked and the request id the client saw.

    2026-11-30 04:50:00,123 [812] INFO inference_server.access: POST /predict 200 1.2ms
    user=usr_1a2b key=key_9f8e client=10.0.0.7 request=7f3c...

Never a credential: the path without its query string, the user's id, the id of the API key
used (or that the session was started with; never the key itself), the client's address (as
the rate limits resolve it behind `server.trusted_proxies`), the request id (the one in the
`X-Request-ID` answer header, so a client's report finds its line). With
`server.log_format: json` the same fields are keys of the object. Control characters in the path
are escaped (`\\x0a`), so every request is one line whatever it holds.

The line is a record of the `inference_server.access` logger, so a handler or filter attached
to it sees every request. It is written from Flask's `request_finished` signal, after every
`after_request` hook of the app (its status is the one the client gets), and timed from
`request_started`, before every `before_request` hook: a failed login held back by
`auth.failed_login_delay_seconds` shows the time its client waited.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, Response, g, request, request_finished, request_started

from auth import client_address, loggable, request_id

from .logs import ACCESS


def init_app(app: Flask) -> None:
    if app.extensions["settings"].server.access_log:
        request_started.connect(_start, app)
        request_finished.connect(_record, app)


def _start(sender: Flask, **extra: object) -> None:
    g.access_started = time.perf_counter()


def _record(sender: Flask, response: Response, **extra: object) -> None:
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    scratch = g._get_current_object()
    principal = scratch.get("principal")
    started = scratch.get("access_started")
    duration = round((time.perf_counter() - started) * 1000, 2) if started else None
    req = request._get_current_object()
    method, path, status = req.method, loggable(req.path), response.status_code
    user_id = principal.id if principal is not None else None
    key_id = principal.key_id if principal is not None else None
    client = loggable(scratch.get("client_address") or client_address())
    rid = request_id()
    fields = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration,
        "user_id": user_id,
        "key_id": key_id,
        "client": client,
        "request_id": rid,
    }
    message = (
        f"{method} {path} {status} {duration}ms user={user_id or '-'} key={key_id or '-'} "
        f"client={client} request={rid}"
    )
    ACCESS.handle(
        ACCESS.makeRecord(ACCESS.name, logging.INFO, __file__, 0, message, (), None, extra=fields)
    )
