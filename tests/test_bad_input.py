"""Bad input on every endpoint gets a 400 or 413 in the error shape, never a 500."""

from __future__ import annotations

import pytest

from auth.inputs import nested_deeper_than
from tests.conftest import assert_error

# Without credentials /predict is refused before its body is read; the others parse it first.
ANY_CODE = {
    "/predict": "AUTHENTICATION_REQUIRED",
    "/auth/login": "VALIDATION_ERROR",
    "/auth/refresh": "VALIDATION_ERROR",
}

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
        ("role", ["admin"]),
        ("role", {"admin": 1}),
        ("email", "admin\u200b@localhost"),
        ("email", "ad\u00admin@localhost"),
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
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    assert_error(actor.predict(basic), 401, "AUTHENTICATION_REQUIRED")
    # A credential that is sent is checked, never ignored in favour of another one.
    key = {"X-API-Key": actor.create_key(actor.admin_headers())["key"]}
    assert actor.predict(key).status_code == 200
    assert_error(actor.predict({**key, **basic}), 401, "AUTHENTICATION_REQUIRED")


def test_refresh_with_garbage(client):
    assert_error(
        client.post("/auth/refresh", json={"refresh_token": "x.y.z"}), 401, "INVALID_TOKEN"
    )


@pytest.mark.parametrize("path", ["/predict", "/auth/login", "/auth/refresh"])
def test_deeply_nested_json_is_400_before_parsing(client, path):
    deep = b"[" * 100_000 + b"]" * 100_000
    response = client.post(path, data=deep, content_type="application/json")
    error = assert_error(response, 400 if path != "/predict" else 401, ANY_CODE[path])
    if path != "/predict":
        assert error["details"] == {"max_depth": 64}


def test_deep_json_from_a_signed_in_user_is_400(client, admin):
    # The body object is one level, so data nested 63 deep is 64 in all: the limit.
    for depth, status in ((63, 400), (64, 400), (100_000, 400)):
        body = b'{"data": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
        response = client.post(
            "/predict", data=body, content_type="application/json", headers=admin
        )
        error = assert_error(response, status, "VALIDATION_ERROR")
        assert ("levels deep" in error["message"]) == (depth >= 64)


@pytest.mark.parametrize(
    ("raw", "deeper"),
    [
        (b'{"a": [[1, 2], "[[[[[[["]}', False),  # brackets in strings do not count
        (b'{"a": [[1, 2], [3, {"b": "]]]"}]]}', True),
        (b'"[[[[[["', False),
        (b"[[[[]]]]", True),
        (b"[[[]]]", False),
        (b'[{"x": [1]}, {"y": {}}]', False),
        (b"[[[[}", False),  # unbalanced: left for the parser to refuse
    ],
)
def test_nesting_depth_is_measured_without_recursion(raw, deeper):
    assert nested_deeper_than(raw, 3) is deeper


def test_deep_json_in_admin_patch_and_register_is_400(client, admin):
    deep = b'{"role": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    for method, path in (("PATCH", "/admin/users/usr_x"), ("POST", "/auth/register")):
        response = client.open(
            path, method=method, data=deep, content_type="application/json", headers=admin
        )
        assert_error(response, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize("value", ["%C2%B2", "%D9%A3", "1e3", "-1"])
def test_odd_digits_in_query_parameters_are_400(client, admin, value):
    response = client.get(f"/admin/users?limit={value}", headers=admin)
    assert assert_error(response, 400, "VALIDATION_ERROR")["details"]["field"] == "limit"


@pytest.mark.parametrize("checksum", ["\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9", "\u0663" * 6])
def test_a_key_with_a_non_ascii_checksum_is_refused(client, checksum):
    key = "sk_live_" + "a" * 32 + checksum
    response = client.post(
        "/predict", json={}, headers={"X-API-Key": key.encode().decode("latin-1")}
    )
    assert_error(response, 401, "INVALID_API_KEY")
    response = client.post("/auth/login", json={"api_key": key})
    assert_error(response, 401, "INVALID_API_KEY")


@pytest.mark.parametrize("role", [["admin"], {"admin": 1}, 1])
def test_a_role_of_the_wrong_type_is_400_in_patch(client, admin, actor, role):
    user_id = actor.register("wrongtype")
    response = client.patch(f"/admin/users/{user_id}", json={"role": role}, headers=admin)
    assert assert_error(response, 400, "VALIDATION_ERROR")["details"]["field"] == "role"


def test_a_full_width_look_alike_of_an_email_is_the_same_email(client, admin):
    body = {"username": "lookalike", "password": "a fine passphrase"}
    full_width = "\uff41\uff44\uff4d\uff49\uff4e@localhost"  # "admin@localhost" in full width
    response = client.post("/auth/register", json={**body, "email": full_width}, headers=admin)
    assert assert_error(response, 409, "CONFLICT")["details"]["field"] == "email"


@pytest.mark.parametrize(
    "body", ['{"username": "admin", "password": "admin123"}', "password=admin123"]
)
def test_json_sent_as_a_form_says_how_it_was_read(client, body):
    # What `curl -d` without -H 'Content-Type: application/json' sends.
    sent = client.post("/auth/login", data=body, content_type="application/x-www-form-urlencoded")
    error = assert_error(sent, 400, "VALIDATION_ERROR")
    assert "read as form data; send Content-Type: application/json" in error["message"]
