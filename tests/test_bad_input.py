"""Bad input on every endpoint gets a 400 or 413 in the error shape, never a 500."""

from __future__ import annotations

import pytest

from tests.conftest import assert_error

ENDPOINTS = [
    ("POST", "/auth/register"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    ("POST", "/auth/change-password"),
    ("POST", "/auth/api-keys"),
    ("POST", "/predict"),
]

BAD_BODIES = [
    pytest.param({"data": b"{not json", "content_type": "application/json"}, id="broken-json"),
    pytest.param({"data": b"just text", "content_type": "text/plain"}, id="not-json"),
    pytest.param({"json": [1, 2, 3]}, id="array-not-object"),
    pytest.param({"json": "a string"}, id="string-not-object"),
    pytest.param({"json": {}}, id="missing-fields"),
    pytest.param(
        {
            "json": {
                "username": 5,
                "password": ["x"],
                "email": None,
                "name": 7,
                "data": "x",
                "refresh_token": 1,
                "current_password": {},
                "new_password": 3,
                "api_key": 9,
            }
        },
        id="wrong-types",
    ),
]


@pytest.fixture
def admin(actor):
    return actor.admin_headers()


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize("body", BAD_BODIES)
def test_bad_bodies_are_400(client, admin, method, path, body):
    response = client.open(path, method=method, headers=admin, **body)
    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert error["message"]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_huge_body_is_413(make_app, actor, method, path):
    app = make_app(server={"max_request_mb": 0.01})
    client = app.test_client()
    token = client.post("/auth/login", json={"username": "admin", "password": "admin123"})
    headers = {"Authorization": "Bearer " + token.get_json()["access_token"]}
    payload = b'{"data": "' + b"x" * 20_000 + b'"}'
    response = client.open(
        path, method=method, data=payload, content_type="application/json", headers=headers
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", ""),
        ("name", "n" * 101),
        ("description", 5),
        ("expires_days", 0),
        ("expires_days", 3651),
        ("expires_days", "30"),
        ("expires_days", True),
        ("scopes", "predict"),
        ("scopes", [1]),
    ],
)
def test_api_key_fields_are_checked(client, admin, field, value):
    response = client.post("/auth/api-keys", json={"name": "ok", field: value}, headers=admin)
    assert assert_error(response, 400, "VALIDATION_ERROR")["details"]["field"] == field


@pytest.mark.parametrize(
    "field, value",
    [
        ("username", "ab"),
        ("username", "has space"),
        ("username", "x" * 40),
        ("email", "no-at-sign"),
        ("role", "root"),
        ("full_name", 12),
    ],
)
def test_register_fields_are_checked(client, admin, field, value):
    body = {
        "username": "valid_name",
        "password": "a fine passphrase",
        "email": "v@example.org",
        field: value,
    }
    response = client.post("/auth/register", json=body, headers=admin)
    assert assert_error(response, 400, "VALIDATION_ERROR")["details"]["field"] == field


def test_garbage_bearer_token(actor):
    assert_error(actor.predict({"Authorization": "Bearer not.a.jwt"}), 401, "INVALID_TOKEN")
    assert_error(actor.predict({"Authorization": "Bearer "}), 401, "INVALID_TOKEN")
    assert_error(
        actor.predict({"Authorization": "Basic dXNlcjpwYXNz"}), 401, "AUTHENTICATION_REQUIRED"
    )


def test_refresh_with_garbage(client):
    assert_error(
        client.post("/auth/refresh", json={"refresh_token": "x.y.z"}), 401, "INVALID_TOKEN"
    )
