"""An app owner's app: the server's app, loaded the way gunicorn's workers load it, with hooks of
the owner's own on top.

test_pipeline.py serves `tests.owner_app:app` with gunicorn and the server's worker class, and
checks that every request, whichever credential it carries, passes through these hooks:

- `before_request`: `X-Block: yes` is answered 403 in JSON, before the view;
- `after_request`: every answer carries `X-Owner: seen`;
- `teardown_request` and a `request_started` receiver: each appends a line `<hook> <X-Request-ID>`
  to the file named by `OWNER_APP_HOOK_LOG` (append mode: the workers share it).

Importing it builds the server's app from the environment, so only gunicorn's workers import it.
"""

from __future__ import annotations

import os

from flask import jsonify, request, request_started

from inference_server import wsgi

HOOK_LOG = "OWNER_APP_HOOK_LOG"

app = wsgi.app


def _note(hook: str) -> None:
    with open(os.environ[HOOK_LOG], "a", encoding="utf-8") as log:
        log.write(f"{hook} {request.headers.get('X-Request-ID', '-')}\n")


@app.before_request
def block():
    if request.headers.get("X-Block") == "yes":
        return jsonify(blocked=True), 403
    return None


@app.after_request
def mark(response):
    response.headers["X-Owner"] = "seen"
    return response


@app.teardown_request
def teardown(exc):
    _note("teardown")


def started(sender, **extra):
    _note("request_started")


request_started.connect(started, app)
