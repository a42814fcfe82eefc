"""The gunicorn worker class: gevent's, answering in the JSON error shape where gunicorn answers.

Some requests never reach the app: gunicorn itself refuses a request line or a header over its
limits (414, 431), a malformed request line, method, header or chunk (400), a transfer coding it
does not know (501). It writes those as an HTML page straight to the socket. `Worker` keeps
gunicorn's judgement (status, reason, message) and rewrites that page into the error shape every
other answer uses, with a request id, so a client parses one format whatever refused it.

`Logger` writes gunicorn's own lines in the app's log format.

gunicorn's master imports this module to find the classes, before any worker is patched by
gevent: it imports nothing of the app at module level (`auth.errors` is imported by the first
error, in the worker, where the app is already loaded).
"""

from __future__ import annotations

import html
import json
import re
import uuid
from typing import Any

from gunicorn import glogging
from gunicorn.workers.ggevent import GeventWorker

from . import logs

_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ([^\r\n]*)\r\n")
_MESSAGE = re.compile(rb"</h1>(.*)</body>", re.DOTALL)


def shaped_error(page: bytes) -> bytes:
    """gunicorn's HTML error response `page` as the same status with the JSON error shape."""
    from auth import error_body, error_code, standard_headers

    status = _STATUS_LINE.match(page)
    if status is None:  # not one of gunicorn's error pages: leave it alone
        return page
    code, reason = int(status[1]), status[2].decode("latin-1")
    found = _MESSAGE.search(page)
    message = html.unescape(found[1].decode("latin-1")).strip() if found else ""
    if code >= 500 and not message:
        message = "the server failed to handle this request"
    rid = uuid.uuid4().hex
    body = json.dumps(
        error_body(error_code(code), message or reason, {"refused_by": "gunicorn"}, rid=rid)
    ).encode()
    headers = [
        ("Connection", "close"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        *standard_headers(rid),
    ]
    head = f"HTTP/1.1 {code} {reason}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    return (head + "\r\n").encode("latin-1") + body


class _ShapedErrors:
    """A client socket whose `sendall` turns gunicorn's error page into the error shape."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(shaped_error(data))


class Logger(glogging.Logger):
    """gunicorn's own lines (master and workers) in the app's format (`logs.py`)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        shared = logs.formatter(logs.configured_format())
        for handler in self.error_log.handlers:
            handler.setFormatter(shared)


class Worker(GeventWorker):
    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        super().handle_error(req, _ShapedErrors(client), addr, exc)
