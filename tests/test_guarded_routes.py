"""Deny by default: every route but the public ones answers 401 without credentials."""

from __future__ import annotations

import os
import re

import pytest

from tests.conftest import assert_error

PUBLIC = {
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/sample-asset"),
    ("GET", "/console"),  # the page holds nothing: what it shows comes from the API, signed in
    ("GET", "/console/sample-asset"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    # Registration decides for itself, per auth.registration; under admin_only it is a 401 too.
}


def _routes(app):
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"sample-\1", rule.rule)
            yield method, path


def test_every_non_public_route_needs_credentials(app, client):
    checked = 0
    for method, path in _routes(app):
        if (method, path) in PUBLIC:
            continue
        response = client.open(path, method=method, json={})
        assert_error(response, 401, "AUTHENTICATION_REQUIRED")
        checked += 1
    assert checked >= 7  # the walk saw the routes it is meant to guard


def test_routes_without_a_decorator_are_still_guarded(make_app):
    app = make_app()

    @app.get("/forgot-to-decorate")
    def forgot():
        return {"secret": True}

    assert_error(app.test_client().get("/forgot-to-decorate"), 401, "AUTHENTICATION_REQUIRED")


@pytest.mark.parametrize(("method", "path"), sorted(PUBLIC))
def test_public_routes_answer_without_credentials(client, method, path):
    response = client.open(path, method=method, json={})
    assert (
        response.status_code != 401
        or response.get_json()["error"]["code"] != "AUTHENTICATION_REQUIRED"
    )


def test_request_id_is_echoed_or_made(client):
    assert (
        client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    made = client.get("/health").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    # Junk ids are replaced, so log lines cannot be forged through the header.
    assert (
        client.get("/health", headers={"X-Request-ID": "a b;c"}).headers["X-Request-ID"] != "a b;c"
    )


def test_a_forked_worker_makes_request_ids_of_its_own(client):
    # The random half of made ids is drawn again in each forked worker: two workers counting
    # from zero must not hand out the same ids.
    before = client.get("/health").headers["X-Request-ID"]
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(writer, client.get("/health").headers["X-Request-ID"].encode())
        os._exit(0)
    os.waitpid(child, 0)
    made = os.read(reader, 64).decode()
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert made[:16] != before[:16]  # its own random half
    assert client.get("/health").headers["X-Request-ID"][:16] == before[:16]  # ours unchanged


def test_unknown_route_and_wrong_method_use_the_error_shape(client):
    assert_error(client.get("/no-such-thing"), 404, "NOT_FOUND")
    assert_error(client.get("/auth/login"), 405, "METHOD_NOT_ALLOWED")


def test_unexpected_errors_are_500_without_a_trace(make_app, caplog):
    app = make_app()

    from auth import public

    @app.get("/explode")
    @public
    def explode():
        raise RuntimeError("secret internals sk_live_xyz")

    app.testing = False
    response = app.test_client().get("/explode")
    error = assert_error(response, 500, "INTERNAL_ERROR")
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in caplog.text and "secret internals" not in caplog.text
    assert error["request_id"] in caplog.text
